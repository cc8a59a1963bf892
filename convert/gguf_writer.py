"""A minimal streaming GGUF v3 writer (little-endian).

File layout written::

    "GGUF" | u32 version=3 | u64 n_tensors | u64 n_kv
    n_kv x (string key | u32 value type | value)
    n_tensors x (string name | u32 n_dims | n_dims x u64 ne | u32 ggml type
                 | u64 offset relative to the data section)
    zero padding to the alignment
    tensor data, each tensor zero-padded to the alignment

A string is a u64 byte length followed by UTF-8 bytes.  ``ne`` is ggml's
order: the reverse of the PyTorch shape (ne[0] is the contiguous dimension).

Use: add every key and every tensor's info, call :meth:`write_header`, then
:meth:`write_tensor` once per tensor in the same order, then
:meth:`finish`.  Only the tensor being written is held in memory.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, List, Sequence, Tuple

import numpy as np

from .gguf_constants import (GGML_MAX_DIMS, GGML_MAX_NAME_LEN, GGML_NUMPY_DTYPE,
                             GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION,
                             SCALAR_FORMATS, GGMLType, GGUFValueType, align_up,
                             ggml_nbytes)


def _pack_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _pack_value(vtype: GGUFValueType, value) -> bytes:
    """Serialise one metadata value (arrays: (element type, list))."""
    if vtype == GGUFValueType.STRING:
        return _pack_string(value)
    if vtype == GGUFValueType.ARRAY:
        etype, items = value
        body = b"".join(_pack_value(etype, v) for v in items)
        return struct.pack("<IQ", int(etype), len(items)) + body
    return struct.pack(SCALAR_FORMATS[vtype], value)


class GGUFWriter:
    """Streams a GGUF v3 file: metadata and tensor infos, then tensor data."""

    def __init__(self, f: BinaryIO, alignment: int = GGUF_DEFAULT_ALIGNMENT):
        if alignment <= 0 or alignment % 8:
            raise ValueError(f"alignment must be a positive multiple of 8, got {alignment}")
        self._f = f
        self.alignment = alignment
        self._kv: List[Tuple[str, GGUFValueType, object]] = []
        self._infos: List[Tuple[str, Tuple[int, ...], GGMLType, int, int]] = []
        self._data_size = 0
        self._next = 0
        self._header_written = False
        self.bytes_written = 0

    # -- metadata ---------------------------------------------------------
    def add(self, key: str, vtype: GGUFValueType, value) -> None:
        """Add one key of an explicit value type; keys must be unique."""
        if self._header_written:
            raise RuntimeError("metadata must be added before write_header()")
        if any(k == key for k, _, _ in self._kv):
            raise ValueError(f"duplicate GGUF key '{key}'")
        try:
            _pack_value(GGUFValueType(vtype), value)  # fail now, not in write_header
        except (struct.error, TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"GGUF key '{key}': value {value!r} does not fit "
                             f"type {GGUFValueType(vtype).name} ({exc})") from None
        self._kv.append((key, GGUFValueType(vtype), value))

    def add_string(self, key: str, value: str) -> None:
        self.add(key, GGUFValueType.STRING, value)

    def add_u32(self, key: str, value: int) -> None:
        self.add(key, GGUFValueType.UINT32, value)

    def add_i32(self, key: str, value: int) -> None:
        self.add(key, GGUFValueType.INT32, value)

    def add_u64(self, key: str, value: int) -> None:
        self.add(key, GGUFValueType.UINT64, value)

    def add_f32(self, key: str, value: float) -> None:
        self.add(key, GGUFValueType.FLOAT32, value)

    def add_bool(self, key: str, value: bool) -> None:
        self.add(key, GGUFValueType.BOOL, bool(value))

    def add_array(self, key: str, etype: GGUFValueType, items: Sequence) -> None:
        """An array of scalars or strings (element type ``etype``)."""
        self.add(key, GGUFValueType.ARRAY, (GGUFValueType(etype), list(items)))

    # -- tensors ----------------------------------------------------------
    def add_tensor_info(self, name: str, shape: Sequence[int], ggml_type: GGMLType) -> None:
        """Declare a tensor: name, PyTorch-order shape, ggml type."""
        if self._header_written:
            raise RuntimeError("tensors must be declared before write_header()")
        if not name or len(name.encode("utf-8")) > GGML_MAX_NAME_LEN:
            raise ValueError(f"tensor name '{name}' must have 1..{GGML_MAX_NAME_LEN} bytes")
        if any(n == name for n, *_ in self._infos):
            raise ValueError(f"duplicate tensor name '{name}'")
        ne = tuple(int(d) for d in reversed(tuple(shape)))
        if not 1 <= len(ne) <= GGML_MAX_DIMS or min(ne) <= 0:
            raise ValueError(f"tensor '{name}': shape {tuple(shape)} must have "
                             f"1..{GGML_MAX_DIMS} positive dimensions")
        nbytes = ggml_nbytes(GGMLType(ggml_type), ne)
        offset = align_up(self._data_size, self.alignment)
        self._infos.append((name, ne, GGMLType(ggml_type), offset, nbytes))
        self._data_size = offset + nbytes

    def _check_alignment_key(self) -> None:
        """general.alignment, if present, must agree with the writer."""
        for key, vtype, value in self._kv:
            if key == "general.alignment":
                if vtype != GGUFValueType.UINT32 or value != self.alignment:
                    raise ValueError("general.alignment must be a u32 equal to "
                                     f"the writer's alignment {self.alignment}")
                return
        if self.alignment != GGUF_DEFAULT_ALIGNMENT:
            raise ValueError("a non-default alignment needs a general.alignment key")

    def _write(self, data) -> None:
        self._f.write(data)
        self.bytes_written += memoryview(data).nbytes

    def write_header(self) -> None:
        """Write the header, all metadata, all tensor infos and padding."""
        if self._header_written:
            raise RuntimeError("write_header() called twice")
        self._check_alignment_key()
        parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self._infos), len(self._kv))]
        for key, vtype, value in self._kv:
            parts += [_pack_string(key), struct.pack("<I", vtype), _pack_value(vtype, value)]
        for name, ne, gtype, offset, _ in self._infos:
            parts += [_pack_string(name), struct.pack("<I", len(ne)),
                      struct.pack(f"<{len(ne)}Q", *ne), struct.pack("<IQ", gtype, offset)]
        header = b"".join(parts)
        self._write(header + b"\0" * (align_up(len(header), self.alignment) - len(header)))
        self._header_written = True

    def write_tensor(self, name: str, data: np.ndarray) -> None:
        """Write the next declared tensor's data (F32/F16: a numpy array of
        the PyTorch shape; other types: raw bytes as a uint8 array)."""
        if not self._header_written:
            raise RuntimeError("write_header() must come before write_tensor()")
        if self._next >= len(self._infos):
            raise RuntimeError(f"tensor '{name}' was not declared")
        exp_name, ne, gtype, offset, nbytes = self._infos[self._next]
        if name != exp_name:
            raise RuntimeError(f"tensors out of order: got '{name}', expected '{exp_name}'")
        data = np.asarray(data)
        if gtype in GGML_NUMPY_DTYPE:
            if data.dtype != GGML_NUMPY_DTYPE[gtype] or data.shape != tuple(reversed(ne)):
                raise ValueError(f"tensor '{name}': got {data.dtype} {data.shape}, declared "
                                 f"{gtype.name} {tuple(reversed(ne))}")
        elif data.dtype != np.uint8 or data.size != nbytes:
            raise ValueError(f"tensor '{name}': expected {nbytes} raw bytes")
        self._write(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
        self._write(b"\0" * (align_up(nbytes, self.alignment) - nbytes))
        self._next += 1

    def finish(self) -> int:
        """Check every declared tensor was written; returns total bytes."""
        if not self._header_written:
            raise RuntimeError("write_header() was never called")
        if self._next != len(self._infos):
            missing = self._infos[self._next][0]
            raise RuntimeError(f"tensor '{missing}' (and maybe more) was never written")
        self._f.flush()
        return self.bytes_written
