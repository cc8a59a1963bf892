"""A checked reader of GGUF v2/v3 files: metadata and tensor infos, tensors
read lazily, one at a time.

Used for llama.cpp's RWKV files (convert/llama_gguf.py).  Every count,
length, shape and offset read from the file is checked against the file's
size before it is used, so a damaged file gives a ConvertError naming the
file, never a huge allocation or a partial read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

from .errors import ConvertError
from .gguf_constants import (GGML_MAX_DIMS, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, SCALAR_FORMATS,
                             GGUFValueType, align_up)

#: unquantised ggml types readable as numbers: id -> (name, numpy dtype of the raw data).
PLAIN_TYPES = {0: ("F32", np.dtype("<f4")), 1: ("F16", np.dtype("<f2")), 30: ("BF16", np.dtype("<u2"))}
#: names of other ggml types, for messages (enum ggml_type).
OTHER_TYPE_NAMES = {2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
                    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
                    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
                    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
                    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"}
#: a string or array longer than this is damage, not data (llama.cpp's
#: largest arrays, the vocabularies, have a few hundred thousand entries).
MAX_ITEMS = 1 << 26


def type_name(ggml_type: int) -> str:
    if ggml_type in PLAIN_TYPES:
        return PLAIN_TYPES[ggml_type][0]
    return OTHER_TYPE_NAMES.get(ggml_type, f"type {ggml_type}")


@dataclass
class GGUFTensor:
    """One tensor: name, ggml type id, ggml shape ``ne`` and absolute offset."""

    name: str
    ggml_type: int
    ne: Tuple[int, ...]
    offset: int

    @property
    def shape(self) -> Tuple[int, ...]:
        """The PyTorch-order shape (ne reversed)."""
        return tuple(reversed(self.ne))


@dataclass
class GGUFContents:
    path: str
    metadata: Dict[str, Any] = field(default_factory=dict)
    tensors: Dict[str, GGUFTensor] = field(default_factory=dict)


class _Cursor:
    """Reads little-endian values from an open file, never past its end."""

    def __init__(self, f, path: str, size: int):
        self.f, self.path, self.size = f, path, size

    def take(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise ConvertError(f"{self.path}: truncated GGUF header (needs {n} more bytes at "
                               f"offset {self.f.tell()} of {self.size})")
        return self.f.read(n)

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, what: str, limit: int = MAX_ITEMS) -> int:
        n = self.scalar("<Q")
        if n > limit or n > self.size:
            raise ConvertError(f"{self.path}: {what} count {n} is impossible in a file of {self.size} bytes")
        return n

    def string(self) -> str:
        data = self.take(self.count("string length"))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConvertError(f"{self.path}: a metadata string is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype = self.scalar("<I")
            if depth > 0:
                raise ConvertError(f"{self.path}: nested metadata arrays are not supported")
            return [self.value(etype, depth + 1) for _ in range(self.count("array"))]
        try:
            return self.scalar(SCALAR_FORMATS[GGUFValueType(vtype)])
        except (ValueError, KeyError):
            raise ConvertError(f"{self.path}: unknown metadata value type {vtype}") from None


def _tensor_info(c: _Cursor) -> GGUFTensor:
    name = c.string()
    n_dims = c.scalar("<I")
    if not 1 <= n_dims <= GGML_MAX_DIMS:
        raise ConvertError(f"{c.path}: tensor '{name[:64]}' has {n_dims} dimensions")
    ne = tuple(c.count(f"tensor '{name[:64]}' dimension", 1 << 40) for _ in range(n_dims))
    return GGUFTensor(name, c.scalar("<I"), ne, c.scalar("<Q"))


def read_gguf(path: str) -> GGUFContents:
    """The metadata and tensor infos of a GGUF file (data read on demand)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        c = _Cursor(f, path, size)
        if c.take(4) != GGUF_MAGIC:
            raise ConvertError(f"{path}: not a GGUF file")
        version = c.scalar("<I")
        if version not in (2, 3):
            raise ConvertError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = c.count("tensor"), c.count("metadata")
        out = GGUFContents(path)
        for _ in range(n_kv):
            key = c.string()
            if key in out.metadata:
                raise ConvertError(f"{path}: duplicate metadata key '{key}'")
            out.metadata[key] = c.value(c.scalar("<I"))
        infos: List[GGUFTensor] = [_tensor_info(c) for _ in range(n_tensors)]
        alignment = out.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment % 8:
            raise ConvertError(f"{path}: bad general.alignment {alignment!r}")
        start = align_up(f.tell(), alignment)
    for info in infos:
        if info.name in out.tensors:
            raise ConvertError(f"{path}: duplicate tensor '{info.name}'")
        info.offset += start
        end = info.offset + (tensor_nbytes(info) if info.ggml_type in PLAIN_TYPES else 0)
        if end > size:
            raise ConvertError(f"{path}: tensor '{info.name}' ends at byte {end} of a file of {size} bytes")
        out.tensors[info.name] = info
    return out


def tensor_nbytes(t: GGUFTensor) -> int:
    """Bytes of an unquantised tensor."""
    n = 1
    for d in t.ne:
        n *= d
    return n * PLAIN_TYPES[t.ggml_type][1].itemsize


def read_tensor(path: str, t: GGUFTensor) -> np.ndarray:
    """The raw data of an F32/F16/BF16 tensor (BF16 as uint16 bits), in
    PyTorch-order shape; checked against the file's size."""
    if t.ggml_type not in PLAIN_TYPES:
        raise ConvertError(f"{path}: tensor '{t.name}' is {type_name(t.ggml_type)}; only F32, F16 "
                           "and BF16 tensors can be read")
    nbytes = tensor_nbytes(t)
    with open(path, "rb") as f:
        f.seek(t.offset)
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ConvertError(f"{path}: tensor '{t.name}' is truncated ({len(data)} of {nbytes} bytes)")
    return np.frombuffer(data, dtype=PLAIN_TYPES[t.ggml_type][1]).reshape(t.shape)
