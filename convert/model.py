"""What an RWKV checkpoint is: version detection, hyper-parameters, shapes.

The version is decided once, from the whole set of (normalised) tensor
names and shapes, by :func:`detect_version`.  The hyper-parameters are then
inferred from shapes (:func:`infer_rwkv4_params`, :func:`infer_wkv_params`
for RWKV-5/6/7) and every tensor is checked against the expected layout of
that version (:func:`check_rwkv4_tensors`, :func:`check_wkv_tensors`):
missing, unexpected and wrongly shaped tensors are all reported, each with
its expected and found shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

from .errors import ConvertError

Shape = Tuple[int, ...]

#: how many problems one error message lists before "... and N more".
MAX_LISTED_PROBLEMS = 12

_BLOCK_RE = re.compile(r"^blocks\.([0-9]+)\.")


def block_count(shapes: Mapping[str, Shape]) -> int:
    """n_layer: one more than the highest ``blocks.N.`` index.

    Every layer has tensors, so an index at or beyond the number of tensors
    is damage (or a gap that the tensor check would report as thousands of
    missing tensors): it is refused here, before anything loops over it.
    """
    highest = -1
    for name in shapes:
        m = _BLOCK_RE.match(name)
        if m is None:
            continue
        digits = m.group(1)
        if len(digits) > len(str(len(shapes))) or int(digits) >= len(shapes):
            raise ConvertError(f"tensor '{name[:80]}': block index {digits[:20]} is impossible "
                               f"in a checkpoint of {len(shapes)} tensors")
        highest = max(highest, int(digits))
    if highest < 0:
        raise ConvertError("checkpoint has no 'blocks.N.*' tensors")
    return highest + 1


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
    n_layer = block_count(shapes)
    n_att = _shape_of(shapes, "blocks.0.att.key.weight", 2)[0]
    n_ffn = _shape_of(shapes, "blocks.0.ffn.key.weight", 2)[0]
    return RWKV4Params(n_vocab, n_embed, n_layer, n_att, n_ffn)


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


# -- RWKV-5, 6 and 7 ---------------------------------------------------------

#: LoRA ranks of each version, in metadata order: name -> the tensor (of
#: layer ``l``) whose shape gives the rank, and the dimension to read.
LORA_SOURCES = {
    "6.0": (("time_mix", "att.time_maa_w1"), ("time_decay", "att.time_decay_w1")),
    "7.0": (("decay", "att.w1"), ("a", "att.a1"), ("v", "att.v1"), ("gate", "att.g1")),
}


@dataclass(frozen=True)
class WkvParams:
    """Hyper-parameters of an RWKV-5.x, 6.0 or 7.0 model.

    ``lora`` lists the LoRA ranks as (name, rank): v6 ``time_mix`` (the rank
    E of the token-shift LoRA: time_maa_w1 is (D, 5E)) and ``time_decay``;
    v7 ``decay``, ``a``, ``v`` (0 in a one-layer model), ``gate``.
    """

    version: str
    n_vocab: int
    n_embed: int
    n_layer: int
    n_ffn: int
    n_head: int
    head_size: int
    lora: Tuple[Tuple[str, int], ...] = ()

    def rank(self, name: str) -> int:
        return dict(self.lora)[name]

    @property
    def has_gate(self) -> bool:
        return self.version != "5.0"


def _head_shape(version: str, shapes: Mapping[str, Shape], n_embed: int) -> Tuple[int, int]:
    """(n_head, head_size) from the tensor the official loader reads them
    from: time_decay's first dimension (5.x), time_faaaa's (6.0), r_k (7.0)."""
    if version.startswith("5"):
        if "blocks.0.att.time_decay" not in shapes or not shapes["blocks.0.att.time_decay"]:
            raise ConvertError("missing tensor 'blocks.0.att.time_decay', needed to infer the number of heads")
        n_head = shapes["blocks.0.att.time_decay"][0]
    else:
        name = "blocks.0.att.time_faaaa" if version == "6.0" else "blocks.0.att.r_k"
        n_head = _shape_of(shapes, name, 2)[0]
    if n_head <= 0 or n_embed % n_head != 0:
        raise ConvertError(f"{n_head} heads do not divide n_embed = {n_embed}")
    return n_head, n_embed // n_head


def _lora_ranks(version: str, shapes: Mapping[str, Shape], n_layer: int) -> Tuple[Tuple[str, int], ...]:
    """The LoRA ranks, each from the first layer that has the tensor."""
    ranks = []
    for name, key in LORA_SOURCES.get(version, ()):
        # v7's value residual exists from layer 1 on (layer 0's, if any, is unused)
        first = 1 if name == "v" else 0
        found = [shapes[f"blocks.{i}.{key}"] for i in range(first, n_layer) if f"blocks.{i}.{key}" in shapes]
        if not found:
            if name == "v" and n_layer == 1:
                ranks.append((name, 0))  # only layer 0, which has no value residual
                continue
            raise ConvertError(f"missing tensor 'blocks.1.{key}', needed to infer the {name} LoRA rank")
        shape = tuple(found[0])
        if len(shape) != 2:
            raise ConvertError(f"tensor '{key}': expected a 2-D shape, found {_fmt(shape)}")
        rank = shape[1] // 5 if name == "time_mix" else shape[1]
        if rank <= 0 or (name == "time_mix" and shape[1] % 5 != 0):
            raise ConvertError(f"tensor '{key}' of shape {_fmt(shape)}: bad LoRA rank")
        ranks.append((name, rank))
    return tuple(ranks)


def infer_wkv_params(version: str, shapes: Mapping[str, Shape]) -> WkvParams:
    """Infer the hyper-parameters of an RWKV-5.x/6.0/7.0 checkpoint.

    Raises:
        ConvertError: a tensor needed for that is missing or malformed; the
            message names the version.
    """
    try:
        return _infer_wkv_params(version, shapes)
    except ConvertError as exc:
        raise ConvertError(f"not a valid RWKV-{version} checkpoint: {exc}") from None


def _infer_wkv_params(version: str, shapes: Mapping[str, Shape]) -> WkvParams:
    n_vocab, n_embed = _shape_of(shapes, "emb.weight", 2)
    n_layer = block_count(shapes)
    n_ffn = _shape_of(shapes, "blocks.0.ffn.key.weight", 2)[0]
    n_head, head_size = _head_shape(version, shapes, n_embed)
    return WkvParams(version, n_vocab, n_embed, n_layer, n_ffn, n_head, head_size,
                     _lora_ranks(version, shapes, n_layer))


# Expected tensors: name -> (shape, squeezable).  A squeezable tensor (a
# parameter vector) may carry extra unit dimensions in the checkpoint, e.g.
# (1, 1, D) for (D); matrices must match exactly.
Expected = Dict[str, Tuple[Shape, bool]]


def _att_common(p: str, D: int, gate: bool) -> Expected:
    e = {p + "ln1.weight": ((D,), True), p + "ln1.bias": ((D,), True),
         p + "ln2.weight": ((D,), True), p + "ln2.bias": ((D,), True),
         p + "att.key.weight": ((D, D), False), p + "att.value.weight": ((D, D), False),
         p + "att.receptance.weight": ((D, D), False), p + "att.output.weight": ((D, D), False),
         p + "att.ln_x.weight": ((D,), True), p + "att.ln_x.bias": ((D,), True)}
    if gate:
        e[p + "att.gate.weight"] = ((D, D), False)
    return e


def _ffn_rkv(p: str, mix: str, D: int, F: int) -> Expected:
    return {p + f"ffn.{mix}k": ((D,), True), p + f"ffn.{mix}r": ((D,), True),
            p + "ffn.key.weight": ((F, D), False), p + "ffn.receptance.weight": ((D, D), False),
            p + "ffn.value.weight": ((D, F), False)}


def _layer_v5(p: str, hp: WkvParams, bonus: str) -> Expected:
    D, H, N = hp.n_embed, hp.n_head, hp.head_size
    per_channel = (H, N) if hp.version == "5.2" else (H,)
    e = _att_common(p, D, hp.has_gate)
    e.update({p + "att.time_mix_k": ((D,), True), p + "att.time_mix_v": ((D,), True),
              p + "att.time_mix_r": ((D,), True), p + "att.time_decay": (per_channel, True),
              p + "att." + bonus: (per_channel, True)})
    if hp.has_gate:
        e[p + "att.time_mix_g"] = ((D,), True)
    e.update(_ffn_rkv(p, "time_mix_", D, hp.n_ffn))
    return e


def _layer_v6(p: str, hp: WkvParams) -> Expected:
    D, H, N = hp.n_embed, hp.n_head, hp.head_size
    E, Ed = hp.rank("time_mix"), hp.rank("time_decay")
    e = _att_common(p, D, True)
    e.update({p + f"att.time_maa_{m}": ((D,), True) for m in "xwkvrg"})
    e.update({p + "att.time_maa_w1": ((D, 5 * E), False), p + "att.time_maa_w2": ((5, E, D), False),
              p + "att.time_decay": ((D,), True), p + "att.time_decay_w1": ((D, Ed), False),
              p + "att.time_decay_w2": ((Ed, D), False), p + "att.time_faaaa": ((H, N), True)})
    e.update(_ffn_rkv(p, "time_maa_", D, hp.n_ffn))
    return e


def _layer_v7(p: str, hp: WkvParams, layer: int) -> Expected:
    D, H, N, F = hp.n_embed, hp.n_head, hp.head_size, hp.n_ffn
    e = _att_common(p, D, False)
    e.update({p + f"att.x_{m}": ((D,), True) for m in "rwkvag"})
    e.update({p + f"att.{n}": ((D,), True) for n in ("w0", "a0", "k_k", "k_a")})
    e[p + "att.r_k"] = ((H, N), True)
    loras = [("w", "decay"), ("a", "a"), ("g", "gate")] + ([("v", "v")] if layer > 0 else [])
    for short, name in loras:
        rank = hp.rank(name)
        e.update({p + f"att.{short}1": ((D, rank), False), p + f"att.{short}2": ((rank, D), False)})
    if layer > 0:
        e[p + "att.v0"] = ((D,), True)
    e.update({p + "ffn.x_k": ((D,), True), p + "ffn.key.weight": ((F, D), False),
              p + "ffn.value.weight": ((D, F), False)})
    return e


def v5_bonus_name(shapes: Mapping[str, Shape]) -> str:
    """The official loader takes ``time_faaaa`` as the bonus u when the file
    has any, else ``exp(time_first)``."""
    return "time_faaaa" if _has(shapes, ".att.time_faaaa") else "time_first"


def wkv_expected(hp: WkvParams, shapes: Mapping[str, Shape]) -> Tuple[Expected, Expected]:
    """(required, optional) tensors of an official RWKV-5/6/7 checkpoint.

    The optional ones are read but unused: layer 0's v0/v1/v2 in RWKV-7
    (the official loader ignores them).
    """
    V, D = hp.n_vocab, hp.n_embed
    required: Expected = {"emb.weight": ((V, D), False), "blocks.0.ln0.weight": ((D,), True),
                          "blocks.0.ln0.bias": ((D,), True)}
    optional: Expected = {}
    bonus = v5_bonus_name(shapes)
    for i in range(hp.n_layer):
        p = f"blocks.{i}."
        if hp.version.startswith("5"):
            required.update(_layer_v5(p, hp, bonus))
        elif hp.version == "6.0":
            required.update(_layer_v6(p, hp))
        else:
            required.update(_layer_v7(p, hp, i))
    if hp.version == "7.0":
        rank = hp.rank("v") or tuple(shapes.get("blocks.0.att.v1", (D, 0)))[-1]
        optional.update({"blocks.0.att.v0": ((D,), True), "blocks.0.att.v1": ((D, rank), False),
                         "blocks.0.att.v2": ((rank, D), False)})
    required.update({"ln_out.weight": ((D,), True), "ln_out.bias": ((D,), True),
                     "head.weight": ((V, D), False)})
    return required, optional


def _squeezed(shape: Shape) -> Shape:
    return tuple(d for d in shape if d != 1)


def _matches(found: Shape, expected: Shape, squeezable: bool) -> bool:
    found, expected = tuple(found), tuple(expected)
    if found == expected:
        return True
    return squeezable and _squeezed(found) == _squeezed(expected)


def _report(problems: List[str], title: str) -> None:
    if problems:
        more = len(problems) - MAX_LISTED_PROBLEMS
        lines = problems[:MAX_LISTED_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        raise ConvertError(f"{title}:\n  " + "\n  ".join(lines))


def check_wkv_tensors(shapes: Mapping[str, Shape], hp: WkvParams) -> None:
    """Check the checkpoint holds exactly the tensors of its version.

    Raises:
        ConvertError: listing every missing, wrongly shaped and unexpected
            tensor (up to MAX_LISTED_PROBLEMS of them).
    """
    required, optional = wkv_expected(hp, shapes)
    problems: List[str] = []
    for name, (shape, squeezable) in required.items():
        if name not in shapes:
            problems.append(f"missing tensor '{name}' (expected shape {_fmt(shape)})")
        elif not _matches(shapes[name], shape, squeezable):
            problems.append(f"tensor '{name}': expected shape {_fmt(shape)}, found {_fmt(shapes[name])}")
    for name, found in shapes.items():
        if name in required:
            continue
        if name not in optional:
            problems.append(f"unexpected tensor '{name}' (shape {_fmt(found)})")
        elif not _matches(found, *optional[name]):
            problems.append(f"tensor '{name}': expected shape {_fmt(optional[name][0])}, found {_fmt(found)}")
    dims = (f"n_vocab={hp.n_vocab} n_embed={hp.n_embed} n_layer={hp.n_layer} n_ffn={hp.n_ffn} "
            f"n_head={hp.n_head} head_size={hp.head_size}"
            + "".join(f" {name}_lora={rank}" for name, rank in hp.lora))
    _report(problems, f"not a valid RWKV-{hp.version} checkpoint ({dims})")
