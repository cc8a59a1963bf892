"""How each output tensor is stored: the output types of ``--type``, the
type policy of ``rwkv_quantize`` applied at conversion, and the encoding of
one tensor's float32 data into its storage type.

The planners (plan_rwkv4.py, plan_wkv.py) give every output tensor a role
and float32 data; :func:`apply_storage` gives each its storage type and
wraps its producer so that the tensor is encoded as it is written (one
tensor in memory at a time).  The policy is the table of
docs/QUANTIZATION.md, the one ``src/rwkv_quantize.cpp`` follows, and the
quantized types are encoded by the library's own quantizer
(``rwkv_quantize_rows``), so a file converted to Q5_1 in one step is
byte-identical to the FP32 conversion quantized with
``python -m rwkv_cpp.quantize`` (tests/test_convert_types.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional

import numpy as np

from .._lib import ffi, lib
from .errors import ConvertError
from .gguf_constants import GGML_BLOCK, GGMLType
from .transforms import OutTensor, to_matrix_type

#: --type name -> (enum rwkv_type of rwkv.h = general.file_type, ggml type of the matrices).
OUTPUT_TYPES = {
    "FP32": (0, GGMLType.F32), "FP16": (1, GGMLType.F16), "Q8_0": (2, GGMLType.Q8_0),
    "Q5_0": (3, GGMLType.Q5_0), "Q5_1": (4, GGMLType.Q5_1), "Q4_0": (5, GGMLType.Q4_0),
    "Q4_1": (6, GGMLType.Q4_1),
}
#: the type of a file made without --type.
DEFAULT_OUTPUT_TYPE = "FP16"
#: types asked for that the library cannot run, and why.
REFUSED_TYPES = {
    "BF16": "BF16 output is not supported: the library's matrix kernels (src/rwkv_model.cpp, "
            "src/rwkv_packed.cpp) run F32, F16 and the Q8_0/Q5_x/Q4_x block types, not BF16; "
            "use FP16 (the default), which keeps 3 more mantissa bits than BF16",
}
#: roles of the planned tensors (the TensorRole of src/rwkv_model.h).
ROLES = ("vector", "matrix", "low_rank", "embedding", "head")
_ERROR_BUF_SIZE = 512


@dataclass(frozen=True)
class StoragePolicy:
    """The storage of one output file: ``--type`` and the quantizer's options."""

    name: str
    file_type: int
    matrix_type: GGMLType
    quantize_head: bool
    quantize_emb: bool
    n_threads: int = 0

    def type_of(self, role: str, shape: tuple) -> GGMLType:
        """The storage type of a tensor (docs/QUANTIZATION.md): vectors F32;
        for a float type every other tensor takes it; for a block type the
        block matrices (and the head/embedding when asked) take it, unless
        their rows are not whole blocks; the rest is F16."""
        if role not in ROLES:
            raise ValueError(f"unknown tensor role {role!r}")
        want = self.matrix_type
        if role == "vector":
            return GGMLType.F32
        if want in (GGMLType.F32, GGMLType.F16):
            return want
        quantize = (role == "matrix" or (role == "head" and self.quantize_head)
                    or (role == "embedding" and self.quantize_emb))
        if not quantize or shape[-1] % GGML_BLOCK[want][0]:
            return GGMLType.F16
        return want


def resolve_storage(out_type: Optional[str] = None, quantize_head: Optional[bool] = None,
                    quantize_emb: Optional[bool] = None, n_threads: int = 0) -> StoragePolicy:
    """The policy of ``--type`` (default FP16); head and embedding options
    default to the library's (``rwkv_quantize_default_params``)."""
    key = DEFAULT_OUTPUT_TYPE if out_type is None else str(out_type).upper()
    if key in REFUSED_TYPES:
        raise ConvertError(REFUSED_TYPES[key])
    if key not in OUTPUT_TYPES:
        raise ConvertError(f"unknown output type {out_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
    defaults = lib.rwkv_quantize_default_params()
    head = bool(defaults.quantize_head) if quantize_head is None else bool(quantize_head)
    emb = bool(defaults.quantize_emb) if quantize_emb is None else bool(quantize_emb)
    file_type, matrix_type = OUTPUT_TYPES[key]
    return StoragePolicy(key, file_type, matrix_type, head, emb, int(n_threads))


def apply_storage(plan: List[OutTensor], policy: StoragePolicy) -> List[OutTensor]:
    """The plan with each tensor's storage type set and its data encoded to
    that type when produced."""
    stored = []
    for out in plan:
        t = policy.type_of(out.role, out.shape)
        produce = out.produce if t == GGMLType.F32 else _encoder(out, t, policy.n_threads)
        stored.append(replace(out, ggml_type=t, produce=produce))
    return stored


def _encoder(out: OutTensor, ggml_type: GGMLType, n_threads: int):
    def produce() -> np.ndarray:
        return encode(out.name, out.produce(), ggml_type, n_threads)
    return produce


def encode(name: str, data: np.ndarray, ggml_type: GGMLType, n_threads: int = 0) -> np.ndarray:
    """float32 data -> its storage: F32 as is, F16 rounded to nearest (an
    error on overflow), a block type as raw bytes from the library's
    quantizer, row by row along the last axis."""
    if ggml_type in (GGMLType.F32, GGMLType.F16):
        return to_matrix_type(name, data, ggml_type)
    src = np.ascontiguousarray(data, dtype=np.float32)
    n_per_row = src.shape[-1]
    n_rows = src.size // n_per_row
    block, block_bytes = GGML_BLOCK[ggml_type]
    dst = np.empty(n_rows * (n_per_row // block) * block_bytes, dtype=np.uint8)
    code = next(c for c, t in OUTPUT_TYPES.values() if t == ggml_type)
    errbuf = ffi.new("char[]", _ERROR_BUF_SIZE)
    status = lib.rwkv_quantize_rows(code, ffi.cast("const float *", ffi.from_buffer(src)), n_rows, n_per_row,
                                    ffi.from_buffer(dst), dst.nbytes, n_threads, errbuf, _ERROR_BUF_SIZE)
    if status != lib.RWKV_STATUS_OK:
        raise ConvertError(f"tensor '{name}': {ffi.string(errbuf).decode('utf-8', 'replace')}")
    return dst
