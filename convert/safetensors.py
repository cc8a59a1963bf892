"""Read and write ``.safetensors`` files with numpy only.

Layout: an 8-byte little-endian header length N, N bytes of JSON header
``{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
"__metadata__": {str: str}}``, then the data section; offsets are relative
to the start of the data section.  Dtypes read: F64, F32, F16, BF16.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Dict, Mapping, Optional

import numpy as np

from .errors import ConvertError
from .paths import write_file_atomically
from .tensors import (ITEMSIZE, RAW_NUMPY_DTYPES, Checkpoint, SourceTensor,
                      f32_to_bf16_bits, shape_numel)

#: the reference implementation refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000


def _read_header(f, path: str, file_size: int):
    """Read and parse the JSON header; returns (header dict, data start)."""
    raw = f.read(8)
    if len(raw) != 8:
        raise ConvertError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw)
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise ConvertError(f"{path}: safetensors header length {n} is invalid "
                           f"for a file of {file_size} bytes (truncated or not safetensors)")
    text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, not JSON, or an integer of more digits than
        # Python converts; RecursionError: arrays nested thousands deep
        raise ConvertError(f"{path}: safetensors header is not valid JSON "
                           f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n


def _parse_entry(path: str, name: str, entry, data_size: int):
    """Validate one header entry; returns (dtype, shape, begin, end)."""
    if not isinstance(entry, dict):
        raise ConvertError(f"{path}: header entry '{name}' is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEMSIZE:
        raise ConvertError(f"{path}: tensor '{name}' has dtype {dtype!r}; only "
                           "F32, F16, BF16 and F64 are supported")
    ok_ints = lambda v, n: (isinstance(v, list) and (n is None or len(v) == n) and
                            all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                for x in v))
    if not ok_ints(shape, None):
        raise ConvertError(f"{path}: tensor '{name}' has invalid shape {shape!r}")
    if not ok_ints(offsets, 2) or offsets[0] > offsets[1]:
        raise ConvertError(f"{path}: tensor '{name}' has invalid data_offsets {offsets!r}")
    begin, end = offsets
    expected = shape_numel(tuple(shape)) * ITEMSIZE[dtype]
    if end - begin != expected:
        raise ConvertError(f"{path}: tensor '{name}' spans {end - begin} bytes but "
                           f"shape {tuple(shape)} x {dtype} needs {expected}")
    if end > data_size:
        raise ConvertError(f"{path}: tensor '{name}' ends at byte {end} of a data "
                           f"section of {data_size} bytes (file truncated?)")
    return dtype, tuple(shape), begin, end


def _check_no_overlap(path: str, spans) -> None:
    """Tensors' byte ranges (begin, end, name) must not overlap."""
    prev_end, prev_name = 0, None
    for begin, end, name in sorted(spans):
        if begin == end:
            continue
        if begin < prev_end:
            raise ConvertError(f"{path}: tensors '{prev_name}' and '{name}' overlap")
        prev_end, prev_name = end, name


def open_safetensors(path: str) -> Checkpoint:
    """Open a safetensors file; tensors are read lazily (one seek + read each)."""
    path = str(path)
    file_size = os.path.getsize(path)
    f = open(path, "rb")
    try:
        header, start = _read_header(f, path, file_size)
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise ConvertError(f"{path}: __metadata__ is not an object")
        tensors, spans = {}, []
        for name, entry in header.items():
            dtype, shape, begin, end = _parse_entry(path, name, entry, file_size - start)
            spans.append((begin, end, name))
            tensors[name] = SourceTensor(name, shape, dtype,
                                         _make_loader(f, path, name, start + begin,
                                                      dtype, shape))
        _check_no_overlap(path, spans)
    except BaseException:
        f.close()
        raise
    return Checkpoint(path, "safetensors", tensors, metadata, closer=f.close)


def _make_loader(f, path: str, name: str, pos: int, dtype: str, shape):
    """A closure that reads one tensor from the open file."""

    def load() -> np.ndarray:
        count = shape_numel(shape)
        nbytes = count * ITEMSIZE[dtype]
        try:
            f.seek(pos)
            data = f.read(nbytes)
        except (OSError, ValueError) as exc:
            raise ConvertError(f"{path}: cannot read tensor '{name}' ({exc})") from None
        if len(data) != nbytes:
            raise ConvertError(f"{path}: tensor '{name}' is truncated "
                               f"({len(data)} of {nbytes} bytes)")
        return np.frombuffer(data, dtype=RAW_NUMPY_DTYPES[dtype], count=count).reshape(shape)

    return load


_NUMPY_TO_TAG = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
                 np.dtype(np.float16): "F16"}


def _dtype_tag(name: str, array: np.ndarray, dtype: Optional[str]):
    """(tag, byte size) of one array stored as ``dtype`` (None: its own)."""
    array = np.asarray(array)
    if dtype is None:
        dtype = _NUMPY_TO_TAG.get(array.dtype.newbyteorder("="))
        if dtype is None:
            raise ConvertError(f"tensor '{name}': cannot store numpy dtype {array.dtype}")
    if dtype == "BF16":
        return dtype, 2 * array.size
    if dtype not in RAW_NUMPY_DTYPES:
        raise ConvertError(f"tensor '{name}': unknown safetensors dtype {dtype!r}")
    return dtype, ITEMSIZE[dtype] * array.size


def _encode(name: str, array: np.ndarray, dtype: Optional[str]):
    """(tag, little-endian bytes) of one array, converted to ``dtype``."""
    array = np.asarray(array)
    dtype, _ = _dtype_tag(name, array, dtype)
    if dtype == "BF16":
        data = f32_to_bf16_bits(array.astype(np.float32))
    else:
        data = array.astype(RAW_NUMPY_DTYPES[dtype])
    return dtype, np.ascontiguousarray(data).tobytes()


def write_safetensors(path: str, arrays: Mapping[str, np.ndarray],
                      dtype: Optional[str] = None,
                      metadata: Optional[Dict[str, str]] = None,
                      progress: Optional[Callable[[int, int, str], None]] = None) -> None:
    """Write numpy arrays to a safetensors file.

    Args:
        path: output file.
        arrays: name -> numpy array (float64/32/16), written in this order.
        dtype: None keeps each array's dtype; ``'F32'``, ``'F16'``, ``'F64'``
            or ``'BF16'`` converts every array (BF16 rounds to nearest even).
        metadata: optional str -> str metadata.
        progress: optional ``progress(done_bytes, total_bytes, name)``,
            called after each array is written.
    """
    header, offset = {}, 0
    for name, array in arrays.items():
        tag, size = _dtype_tag(name, array, dtype)
        header[name] = {"dtype": tag, "shape": list(np.shape(array)),
                        "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned

    def write(f) -> int:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        done = 0
        for name, array in arrays.items():
            done += f.write(_encode(name, array, dtype)[1])
            if progress:
                progress(done, offset, name)
        return 8 + len(text) + done

    write_file_atomically(path, write)
