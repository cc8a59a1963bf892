"""What an RWKV checkpoint is: version detection, hyper-parameters, shapes.

The version is decided once, from the whole set of (normalised) tensor
names and shapes, by :func:`detect_version`.  For RWKV-4 the
hyper-parameters are inferred from shapes (:func:`infer_rwkv4_params`) and
every tensor is then checked against the expected layout
(:func:`check_rwkv4_tensors`): missing, unexpected and wrongly shaped
tensors are all reported, each with its expected and found shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

from .errors import ConvertError, UnsupportedVersionError

Shape = Tuple[int, ...]

#: how many problems one error message lists before "... and N more".
MAX_LISTED_PROBLEMS = 12

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def _has(shapes: Mapping[str, Shape], suffix: str) -> bool:
    """Whether any block tensor name ends with ``suffix``."""
    return any(_BLOCK_RE.match(n) and n.endswith(suffix) for n in shapes)


def _is_v52(shapes: Mapping[str, Shape]) -> bool:
    """5.2 has a per-channel decay: some att.time_decay of shape (H, N>1)."""
    return any(n.endswith(".att.time_decay") and len(s) > 1 and s[1] > 1
               for n, s in shapes.items())


def detect_version(shapes: Mapping[str, Shape]) -> str:
    """The RWKV version of a checkpoint, from all its names and shapes.

    Args:
        shapes: official (normalised) tensor name -> PyTorch shape.

    Returns:
        ``'4'``, ``'5.0'``, ``'5.1'``, ``'5.2'``, ``'6.0'`` or ``'7.0'``.

    Raises:
        ConvertError: the names match no RWKV version.
    """
    if _has(shapes, ".att.x_r") or _has(shapes, ".att.r_k") or _has(shapes, ".att.w0"):
        return "7.0"
    if _has(shapes, ".att.time_maa_x"):
        return "6.0"
    if _has(shapes, ".att.ln_x.weight"):
        if _is_v52(shapes):
            return "5.2"
        return "5.1" if _has(shapes, ".att.gate.weight") else "5.0"
    if _has(shapes, ".att.time_mix_k"):
        return "4"
    listed = ", ".join(sorted(shapes)[:8]) or "(no tensors)"
    raise ConvertError("unrecognised checkpoint: the tensor names match no RWKV "
                       f"version (first names: {listed})")


def require_rwkv4(version: str) -> None:
    """Raise UnsupportedVersionError unless the version is RWKV-4."""
    if version != "4":
        raise UnsupportedVersionError(
            f"RWKV-{version} checkpoint detected; rwkv_cpp currently converts "
            "RWKV-4 only", version=version)


@dataclass(frozen=True)
class RWKV4Params:
    """Hyper-parameters of an RWKV-4 model."""

    n_vocab: int
    n_embed: int
    n_layer: int
    n_att: int
    n_ffn: int


def _shape_of(shapes: Mapping[str, Shape], name: str, ndim: int) -> Shape:
    """The shape of a tensor needed to infer hyper-parameters."""
    if name not in shapes:
        raise ConvertError(f"missing tensor '{name}', needed to infer the model size")
    shape = tuple(shapes[name])
    if len(shape) != ndim or min(shape) <= 0:
        raise ConvertError(f"tensor '{name}': expected a non-empty {ndim}-D shape, "
                           f"found {shape}")
    return shape


def infer_rwkv4_params(shapes: Mapping[str, Shape]) -> RWKV4Params:
    """Infer n_vocab, n_embed, n_layer, n_att, n_ffn from tensor shapes.

    n_layer is one more than the highest block index; a gap in the block
    indices shows up later as missing tensors.
    """
    n_vocab, n_embed = _shape_of(shapes, "emb.weight", 2)
    layers = [int(m.group(1)) for m in map(_BLOCK_RE.match, shapes) if m]
    if not layers:
        raise ConvertError("checkpoint has no 'blocks.N.*' tensors")
    n_att = _shape_of(shapes, "blocks.0.att.key.weight", 2)[0]
    n_ffn = _shape_of(shapes, "blocks.0.ffn.key.weight", 2)[0]
    return RWKV4Params(n_vocab, n_embed, max(layers) + 1, n_att, n_ffn)


def rwkv4_expected_shapes(hp: RWKV4Params) -> Dict[str, Shape]:
    """Every tensor of an official RWKV-4 checkpoint with its PyTorch shape.

    time_* parameters are listed squeezed, (D) or (A); the checkpoint may
    hold them as (D), (1, D) or (1, 1, D).
    """
    V, D, A, F = hp.n_vocab, hp.n_embed, hp.n_att, hp.n_ffn
    shapes = {"emb.weight": (V, D), "blocks.0.ln0.weight": (D,),
              "blocks.0.ln0.bias": (D,)}
    for i in range(hp.n_layer):
        p = f"blocks.{i}."
        shapes.update({
            p + "ln1.weight": (D,), p + "ln1.bias": (D,),
            p + "ln2.weight": (D,), p + "ln2.bias": (D,),
            p + "att.time_decay": (A,), p + "att.time_first": (A,),
            p + "att.time_mix_k": (D,), p + "att.time_mix_v": (D,),
            p + "att.time_mix_r": (D,),
            p + "att.key.weight": (A, D), p + "att.value.weight": (A, D),
            p + "att.receptance.weight": (A, D), p + "att.output.weight": (D, A),
            p + "ffn.time_mix_k": (D,), p + "ffn.time_mix_r": (D,),
            p + "ffn.key.weight": (F, D), p + "ffn.receptance.weight": (D, D),
            p + "ffn.value.weight": (D, F),
        })
    shapes.update({"ln_out.weight": (D,), "ln_out.bias": (D,), "head.weight": (V, D)})
    return shapes


def is_time_param(name: str) -> bool:
    """Whether a tensor is a squeezable ``time_*`` parameter."""
    return name.rsplit(".", 1)[-1].startswith("time_")


def shape_matches(name: str, found: Shape, expected: Shape) -> bool:
    """Exact match, or for time_* params (X) vs (X), (1, X), (1, 1, X)."""
    found, expected = tuple(found), tuple(expected)
    if found == expected:
        return True
    return (is_time_param(name) and len(expected) == 1 and 1 <= len(found) <= 3
            and found[-1] == expected[0] and all(d == 1 for d in found[:-1]))


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_rwkv4_tensors(shapes: Mapping[str, Shape], hp: RWKV4Params) -> None:
    """Check the checkpoint holds exactly the RWKV-4 tensors, well shaped.

    Raises:
        ConvertError: listing every missing, wrongly shaped and unexpected
            tensor (up to MAX_LISTED_PROBLEMS of them).
    """
    expected = rwkv4_expected_shapes(hp)
    problems: List[str] = []
    for name, shape in expected.items():
        if name not in shapes:
            problems.append(f"missing tensor '{name}' (expected shape {_fmt(shape)})")
        elif not shape_matches(name, shapes[name], shape):
            problems.append(f"tensor '{name}': expected shape {_fmt(shape)}, "
                            f"found {_fmt(shapes[name])}")
    for name, shape in shapes.items():
        if name not in expected:
            problems.append(f"unexpected tensor '{name}' (shape {_fmt(shape)})")
    if problems:
        more = len(problems) - MAX_LISTED_PROBLEMS
        lines = problems[:MAX_LISTED_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        dims = (f"n_vocab={hp.n_vocab} n_embed={hp.n_embed} n_layer={hp.n_layer} "
                f"n_att={hp.n_att} n_ffn={hp.n_ffn}")
        raise ConvertError(f"not a valid RWKV-4 checkpoint ({dims}):\n  " +
                           "\n  ".join(lines))
