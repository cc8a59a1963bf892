"""Constants of the GGUF v3 file format shared by the writer and reader."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
#: ggml's default alignment of the data section and of every tensor.
GGUF_DEFAULT_ALIGNMENT = 32
#: GGML_MAX_NAME is 64 including the terminating NUL.
GGML_MAX_NAME_LEN = 63
#: GGML_MAX_DIMS.
GGML_MAX_DIMS = 4


class GGUFValueType(IntEnum):
    """Type tags of GGUF metadata values."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


#: struct format of every fixed-size value type (little-endian).
SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


class GGMLType(IntEnum):
    """ggml tensor types (enum ggml_type) the converter knows about."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8


#: (elements per block, bytes per block) of each ggml type.
GGML_BLOCK = {
    GGMLType.F32: (1, 4), GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18), GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22), GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
}

#: numpy dtype of the unquantised types.
GGML_NUMPY_DTYPE = {GGMLType.F32: np.dtype("<f4"), GGMLType.F16: np.dtype("<f2")}


def ggml_nbytes(ggml_type: GGMLType, ne) -> int:
    """Bytes of a tensor of type ``ggml_type`` and ggml shape ``ne``."""
    block, size = GGML_BLOCK[GGMLType(ggml_type)]
    if ne and ne[0] % block:
        raise ValueError(f"row length {ne[0]} is not a multiple of the "
                         f"{GGMLType(ggml_type).name} block size {block}")
    n = 1
    for d in ne:
        n *= int(d)
    return n // block * size


def align_up(n: int, alignment: int) -> int:
    """Round ``n`` up to a multiple of ``alignment``."""
    return (n + alignment - 1) // alignment * alignment
