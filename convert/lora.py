"""Merge an RWKV-LM-LoRA adapter into a base checkpoint at conversion.

The adapter is a checkpoint (``.pth`` or ``.safetensors``) in the
RWKV-LM-LoRA layout: for a base matrix ``NAME.weight`` of shape (out, in),
``NAME.lora_A`` of shape (r, in) and ``NAME.lora_B`` of shape (out, r); the
merged matrix is ``W + (alpha / r) * B @ A``, the product RWKV-LM-LoRA's
``LoraLinear`` adds to its output.  Any other adapter tensor (a fine-tuned
layer norm or decay) replaces the base tensor of the same name; an
adapter's tuned state (``blocks.N.att.time_state``) is added to the base
(state_tuning.py).

The merge is lazy, one tensor at a time: each merged tensor is a float32
:class:`SourceTensor` computed when the converter reaches it (evaluated in
float64 and rounded once to float32, before the output type's rounding).
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

import numpy as np

from .errors import ConvertError
from .tensors import SourceTensor

#: suffixes of the two factors of a LoRA pair.
LORA_A, LORA_B = ".lora_A", ".lora_B"
#: alpha when none is given: RWKV-LM-LoRA's training default (--lora_alpha 32).
DEFAULT_LORA_ALPHA = 32.0


def _pairs(adapter: Mapping[str, SourceTensor], label: str) -> Tuple[Dict[str, Tuple[SourceTensor, SourceTensor]],
                                                                     Dict[str, SourceTensor]]:
    """Split the adapter into {base matrix name: (A, B)} and the replacements."""
    pairs: Dict[str, Tuple[SourceTensor, SourceTensor]] = {}
    replacements: Dict[str, SourceTensor] = {}
    for name, t in adapter.items():
        for suffix, other in ((LORA_A, LORA_B), (LORA_B, LORA_A)):
            if name.endswith(suffix):
                stem = name[: -len(suffix)]
                if stem + other not in adapter:
                    raise ConvertError(f"{label}: '{name}' has no '{stem + other}'")
                a, b = adapter[stem + LORA_A], adapter[stem + LORA_B]
                pairs[stem + ".weight"] = (a, b)
                break
        else:
            replacements[name] = t
    return pairs, replacements


def _check_pair(label: str, name: str, w: SourceTensor, a: SourceTensor, b: SourceTensor) -> None:
    """(out, in) = (out, r) @ (r, in), with one rank r."""
    if len(w.shape) != 2 or len(a.shape) != 2 or len(b.shape) != 2:
        raise ConvertError(f"{label}: '{name}' is {w.shape} in the base; lora_A {a.shape} and "
                           f"lora_B {b.shape} must be matrices of a matrix")
    if a.shape[0] != b.shape[1]:
        raise ConvertError(f"{label}: rank mismatch for '{name}': lora_A {a.shape} has rank {a.shape[0]}, "
                           f"lora_B {b.shape} has rank {b.shape[1]}")
    if (b.shape[0], a.shape[1]) != w.shape:
        raise ConvertError(f"{label}: shape mismatch for '{name}': lora_B @ lora_A is "
                           f"{(b.shape[0], a.shape[1])}, the base matrix is {w.shape}; "
                           "is the adapter made for another model?")


def _merged(name: str, w: SourceTensor, a: SourceTensor, b: SourceTensor, alpha: float) -> SourceTensor:
    scale = float(alpha) / a.shape[0]

    def load() -> np.ndarray:
        # W + (alpha / r) * B @ A, exact in float64, rounded once
        delta = b.to_f32().astype(np.float64) @ a.to_f32().astype(np.float64)
        return (w.to_f32().astype(np.float64) + scale * delta).astype(np.float32)
    return SourceTensor(name, w.shape, "F32", load)


def merge_lora(base: Mapping[str, SourceTensor], adapter: Mapping[str, SourceTensor],
               alpha: float = DEFAULT_LORA_ALPHA, path: str = "<memory>") -> Tuple[Dict[str, SourceTensor], int, int]:
    """The base tensors with the adapter merged in (both with official names).

    Returns ``(tensors, n_pairs, n_replaced)``; ``path`` names the adapter
    in error messages.

    Raises:
        ConvertError: an adapter tensor names no base tensor (an adapter of
            another model), a factor without its partner, or a rank or shape
            mismatch; each message names the tensor.
    """
    if not alpha > 0 or not np.isfinite(alpha):
        raise ConvertError(f"--lora-alpha must be a positive number, got {alpha}")
    label = f"LoRA adapter {path}"
    if not adapter:
        raise ConvertError(f"{label}: the adapter holds no tensor")
    pairs, replacements = _pairs(adapter, label)
    # a tuned state (time_state, state tuning) is new to the base: it is kept
    unknown = [n for n in list(pairs) + list(replacements) if n not in base and not n.endswith(".att.time_state")]
    if unknown:
        known = len(pairs) + len(replacements) - len(unknown)
        raise ConvertError(f"{label}: {len(unknown)} of its targets are not in the base model "
                           f"(first: '{unknown[0]}'; {known} match): is it an adapter of another model?")
    merged = dict(base)
    for name, (a, b) in pairs.items():
        _check_pair(label, name, base[name], a, b)
        merged[name] = _merged(name, base[name], a, b, alpha)
    for name, t in replacements.items():
        if name in base and t.shape != base[name].shape:
            raise ConvertError(f"{label}: '{name}' has shape {t.shape}, the base tensor {base[name].shape}; "
                               "is the adapter made for another model?")
        merged[name] = t
    return merged, len(pairs), len(replacements)
