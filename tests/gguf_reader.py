"""A small pure-Python GGUF v3 reader, for tests and benchmarks: it reads
back what the converter and the quantizer wrote (the package itself never
reads GGUF in Python; the C library loads the files).

:func:`read_gguf` parses the header, metadata and tensor infos, checking
every count, length and offset against the file size; tensor data is read
on demand by :meth:`GGUFFile.tensor`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Tuple

import numpy as np

from rwkv_cpp.convert.errors import ConvertError
from rwkv_cpp.convert.gguf_constants import (GGML_BLOCK, GGML_MAX_DIMS, GGML_NUMPY_DTYPE,
                                             GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, SCALAR_FORMATS,
                                             GGMLType, GGUFValueType, align_up, ggml_nbytes)


@dataclass
class GGUFTensorInfo:
    """One tensor of a GGUF file.

    Attributes:
        ne: ggml shape (ne[0] contiguous); ``shape`` is the PyTorch order.
        offset: offset from the start of the data section.
    """

    name: str
    ne: Tuple[int, ...]
    type: GGMLType
    offset: int
    nbytes: int

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(reversed(self.ne))


@dataclass
class GGUFFile:
    """Parsed metadata of a GGUF file (tensor data is read lazily)."""

    path: str
    version: int
    kv: Dict[str, Any] = field(default_factory=dict)
    kv_types: Dict[str, GGUFValueType] = field(default_factory=dict)
    tensors: Dict[str, GGUFTensorInfo] = field(default_factory=dict)
    alignment: int = GGUF_DEFAULT_ALIGNMENT
    data_offset: int = 0

    def tensor(self, name: str) -> np.ndarray:
        """The data of one tensor: F32/F16 as a numpy array of PyTorch
        shape, other types as raw uint8 bytes."""
        info = self.tensors[name]
        with open(self.path, "rb") as f:
            f.seek(self.data_offset + info.offset)
            raw = f.read(info.nbytes)
        if len(raw) != info.nbytes:
            raise ConvertError(f"{self.path}: tensor '{name}' is truncated")
        if info.type in GGML_NUMPY_DTYPE:
            return np.frombuffer(raw, dtype=GGML_NUMPY_DTYPE[info.type]).reshape(info.shape)
        return np.frombuffer(raw, dtype=np.uint8)


_VALUE_TYPES = frozenset(int(t) for t in GGUFValueType)


class _Reader:
    """Bounds-checked little-endian reads from a file."""

    def __init__(self, f: BinaryIO, path: str, size: int):
        self.f, self.path, self.size = f, path, size

    def read(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise ConvertError(f"{self.path}: truncated GGUF file (need {n} bytes at "
                               f"offset {self.f.tell()}, file has {self.size})")
        return self.f.read(n)

    def scalar(self, vtype: GGUFValueType):
        fmt = SCALAR_FORMATS[vtype]
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def u32(self) -> int:
        return self.scalar(GGUFValueType.UINT32)

    def u64(self) -> int:
        return self.scalar(GGUFValueType.UINT64)

    def string(self) -> str:
        n = self.u64()
        try:
            return self.read(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ConvertError(f"{self.path}: a GGUF string is not valid UTF-8") from None

    def value(self, vtype: int):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype, n = self.u32(), self.u64()
            if etype == GGUFValueType.ARRAY or etype not in _VALUE_TYPES:
                raise ConvertError(f"{self.path}: bad GGUF array element type {etype}")
            if n > self.size:  # every element needs at least one byte
                raise ConvertError(f"{self.path}: GGUF array of {n} elements is too long")
            return [self.value(etype) for _ in range(n)]
        if vtype not in SCALAR_FORMATS:
            raise ConvertError(f"{self.path}: unknown GGUF value type {vtype}")
        return self.scalar(GGUFValueType(vtype))


def _read_tensor_info(r: _Reader) -> GGUFTensorInfo:
    """Parse and check one tensor info record."""
    name = r.string()
    n_dims = r.u32()
    if not 1 <= n_dims <= GGML_MAX_DIMS:
        raise ConvertError(f"{r.path}: tensor '{name}' has {n_dims} dimensions")
    ne = tuple(r.u64() for _ in range(n_dims))
    gtype = r.u32()
    if gtype not in GGML_BLOCK:
        raise ConvertError(f"{r.path}: tensor '{name}' has unknown ggml type {gtype}")
    offset = r.u64()
    if any(d <= 0 or d >= 1 << 40 for d in ne):
        raise ConvertError(f"{r.path}: tensor '{name}' has invalid shape {ne}")
    try:
        nbytes = ggml_nbytes(GGMLType(gtype), ne)
    except ValueError as exc:
        raise ConvertError(f"{r.path}: tensor '{name}': {exc}") from None
    return GGUFTensorInfo(name, ne, GGMLType(gtype), offset, nbytes)


def read_gguf(path: str) -> GGUFFile:
    """Parse a GGUF v2/v3 file's metadata and tensor infos, with checks."""
    path = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, path, size)
        if r.read(4) != GGUF_MAGIC:
            raise ConvertError(f"{path}: not a GGUF file (bad magic)")
        version = r.u32()
        if version not in (2, 3):
            raise ConvertError(f"{path}: unsupported GGUF version {version}")
        n_tensors, n_kv = r.u64(), r.u64()
        if n_tensors > size or n_kv > size:
            raise ConvertError(f"{path}: implausible counts ({n_tensors} tensors, {n_kv} keys)")
        out = GGUFFile(path, version)
        for _ in range(n_kv):
            key, vtype = r.string(), r.u32()
            if key in out.kv:
                raise ConvertError(f"{path}: duplicate key '{key}'")
            out.kv[key] = r.value(vtype)
            out.kv_types[key] = GGUFValueType(vtype)
        out.alignment = int(out.kv.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        if out.alignment <= 0 or out.alignment & (out.alignment - 1):
            raise ConvertError(f"{path}: invalid alignment {out.alignment}")
        for _ in range(n_tensors):
            info = _read_tensor_info(r)
            if info.name in out.tensors:
                raise ConvertError(f"{path}: duplicate tensor '{info.name}'")
            out.tensors[info.name] = info
        out.data_offset = align_up(f.tell(), out.alignment)
    _check_tensor_offsets(out, size)
    return out


def _check_tensor_offsets(g: GGUFFile, size: int) -> None:
    """Tensor data must be aligned, in the file and not overlapping."""
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in g.tensors.values())
    prev_end = 0
    for begin, end, name in spans:
        if begin % g.alignment:
            raise ConvertError(f"{g.path}: tensor '{name}' offset {begin} is not aligned")
        if begin < prev_end:
            raise ConvertError(f"{g.path}: tensor '{name}' overlaps the previous tensor")
        if g.data_offset + end > size:
            raise ConvertError(f"{g.path}: tensor '{name}' extends past the end of the file")
        prev_end = end
