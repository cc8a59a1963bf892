"""Transforms applied to checkpoint tensors at conversion, and the planned
output tensor (name, shape, type, a function producing its data).

Each transform reproduces a value the official loader (``rwkv`` 0.8.32)
computes at load time, evaluated exactly (float64) and rounded once to
float32; docs/FORMAT.md lists which tensor gets which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ConvertError
from .gguf_constants import GGMLType, ggml_nbytes
from .tensors import SourceTensor, raw_to_f32, round_to_bf16

#: value of the GGUF key rwkv.format_version of the files these transforms make.
FORMAT_VERSION = 1
#: epsilon of every LayerNorm (torch's default, used by BlinkDL).
LAYER_NORM_EPSILON = 1e-5
#: epsilon of the ln_x GroupNorm in every official RWKV-5/6/7 model
#: (``F.group_norm(..., eps=64e-5)`` in rwkv/model.py).
LN_X_EPSILON = 64e-5
#: rows of the embedding layer-normalised at a time (bounds float64 memory).
EMB_CHUNK_ROWS = 4096


@dataclass
class OutTensor:
    """One tensor of the output file; ``produce`` computes its data.

    ``role`` is the tensor's part in the model, which decides its storage
    type (storage.py, docs/QUANTIZATION.md): 'vector' (always F32),
    'matrix', 'low_rank' (v6/v7 LoRA matrices), 'embedding' or 'head'.
    """

    name: str
    shape: tuple
    ggml_type: GGMLType
    produce: Callable[[], np.ndarray]
    role: str = "vector"

    @property
    def nbytes(self) -> int:
        return ggml_nbytes(self.ggml_type, tuple(reversed(self.shape)))


def layer_norm_f64(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                   eps: float = LAYER_NORM_EPSILON) -> np.ndarray:
    """LayerNorm over the last axis in float64 (biased variance, as torch)."""
    x = np.asarray(x, dtype=np.float64)
    centered = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    return centered / np.sqrt(var + eps) * weight.astype(np.float64) + bias.astype(np.float64)


def round_like_source(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32 values to the source dtype's precision (kept float32).

    The official package computes ``F.layer_norm(emb)`` in the checkpoint's
    dtype, so a bf16 (fp16) checkpoint's embedding is bf16 (fp16)-rounded.
    """
    if dtype == "BF16":
        return round_to_bf16(values)
    if dtype == "F16":
        with np.errstate(over="ignore"):
            return values.astype(np.float16).astype(np.float32)
    return values


def emb_with_ln0(emb: SourceTensor, ln0_w: SourceTensor, ln0_b: SourceTensor,
                 round_to_source: bool = True) -> np.ndarray:
    """``LayerNorm(emb)`` with blocks.0.ln0, as float32 rounded like ``emb``.

    Computed exactly (float64) then rounded once to float32 and, for a
    bf16/fp16 source, to bf16/fp16: the value the official loader gets.
    ``round_to_source=False`` skips the last rounding (RWKV-7: the official
    loader widens the checkpoint to float32 before the layer norm).
    Works in blocks of rows so the float64 temporaries stay small.
    """
    raw = emb.raw()
    weight, bias = ln0_w.to_f32().reshape(-1), ln0_b.to_f32().reshape(-1)
    out = np.empty(raw.shape, dtype=np.float32)
    for start in range(0, raw.shape[0], EMB_CHUNK_ROWS):
        rows = slice(start, start + EMB_CHUNK_ROWS)
        normed = layer_norm_f64(raw_to_f32(raw[rows], emb.dtype), weight, bias)
        normed = normed.astype(np.float32)
        out[rows] = round_like_source(normed, emb.dtype) if round_to_source else normed
    return out


def decay_transform(time_decay: np.ndarray) -> np.ndarray:
    """``-exp(time_decay)`` as float32, the official ``-torch.exp(w.float())``.

    Stored pre-transformed so the runtime's WKV uses it directly (w < 0).
    The input is taken as float32; exp is evaluated in float64 and rounded
    once to float32, i.e. the correctly rounded float32 exp.  torch's float32
    exp agrees with that on ~99% of inputs (1 ulp off otherwise), while
    numpy's float32 exp agrees on only ~60%.
    """
    w = np.asarray(time_decay, dtype=np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        return (-np.exp(w)).astype(np.float32)


def to_matrix_type(name: str, data: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """float32 -> the matrix storage type; refuses values that overflow FP16."""
    data = np.asarray(data, dtype=np.float32)
    if ggml_type == GGMLType.F32:
        return data
    with np.errstate(over="ignore"):
        half = data.astype(np.float16)  # round to nearest even
    bad = ~np.isfinite(half) & np.isfinite(data)
    if bad.any():
        raise ConvertError(f"tensor '{name}': values up to {np.abs(data).max():g} "
                           "overflow FP16 (max 65504); convert with --type FP32")
    return half


def exp_neg_exp(time_decay: np.ndarray) -> np.ndarray:
    """``exp(-exp(time_decay))`` as float32, the RWKV-5 loader's
    ``torch.exp(-torch.exp(w.float()))`` (the per-token decay factor w).

    Evaluated in float64 and rounded once to float32.
    """
    w = np.asarray(time_decay, dtype=np.float32).astype(np.float64)
    with np.errstate(over="ignore"):
        return np.exp(-np.exp(w)).astype(np.float32)


def exp_f32(values: np.ndarray) -> np.ndarray:
    """``exp(values)`` as float32 (the RWKV-5 loader's ``torch.exp(time_first)``),
    evaluated in float64 and rounded once."""
    with np.errstate(over="ignore"):
        return np.exp(np.asarray(values, dtype=np.float32).astype(np.float64)).astype(np.float32)


# -- producers of planned data ---------------------------------------------

def vector_of(src: SourceTensor, length: int) -> Callable[[], np.ndarray]:
    return lambda: src.to_f32().reshape(length)


def f32_of(src: SourceTensor) -> Callable[[], np.ndarray]:
    return src.to_f32
