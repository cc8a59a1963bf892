"""The source-tensor abstraction shared by all checkpoint readers.

A :class:`SourceTensor` describes one tensor of an input checkpoint (name,
PyTorch-order shape, source dtype) and loads its data only when asked, so a
converter can walk a multi-gigabyte checkpoint holding one tensor at a time.

bfloat16 has no numpy dtype: raw bf16 data is carried as ``uint16`` bit
patterns and widened to float32 by shifting the bits left by 16 (exact).
"""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

from .errors import ConvertError

#: numpy dtype holding the raw data of each source dtype (bf16 as bits).
RAW_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}

#: bytes per element of each source dtype.
ITEMSIZE = {name: dt.itemsize for name, dt in RAW_NUMPY_DTYPES.items()}


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bf16 bit patterns (uint16) to float32; exact for every value."""
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bf16 bit patterns, round-to-nearest-even.

    This is the rounding of ``torch.Tensor.to(torch.bfloat16)``: finite
    values that overflow become infinities, NaNs stay (quiet) NaNs.
    """
    f = np.ascontiguousarray(values, dtype=np.float32)
    bits = f.view(np.uint32)
    # add 0x7FFF plus the lowest kept bit, then truncate: ties go to even.
    # No overflow for non-NaN inputs (the largest, -inf, is 0xFF800000).
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        quiet = ((bits >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
        rounded = np.where(nan, quiet, rounded)
    return rounded


def raw_to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen raw source data (bf16 as uint16 bits) to float32, exactly."""
    if dtype == "BF16":
        return bf16_bits_to_f32(raw)
    return raw.astype(np.float32, copy=False)


def round_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bf16 value, returned as float32."""
    return bf16_bits_to_f32(f32_to_bf16_bits(values))


def shape_numel(shape: Tuple[int, ...]) -> int:
    """Number of elements of a shape (1 for a scalar)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


class SourceTensor:
    """One tensor of an input checkpoint, loaded lazily.

    Attributes:
        name: the tensor's name in the checkpoint (or its normalised name).
        shape: PyTorch-order shape, a tuple of ints.
        dtype: source dtype, one of ``'F32'``, ``'F16'``, ``'BF16'``, ``'F64'``.
    """

    def __init__(self, name: str, shape, dtype: str,
                 load_raw: Callable[[], np.ndarray]):
        if dtype not in RAW_NUMPY_DTYPES:
            raise ConvertError(f"tensor '{name}': unsupported dtype {dtype}")
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self._load_raw = load_raw

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray) -> "SourceTensor":
        """Wrap an in-memory float64/float32/float16 numpy array."""
        array = np.asarray(array)
        tags = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
                np.dtype(np.float16): "F16"}
        tag = tags.get(array.dtype.newbyteorder("="))
        if tag is None:
            raise ConvertError(f"tensor '{name}': unsupported numpy dtype {array.dtype}")
        array = array.astype(RAW_NUMPY_DTYPES[tag], copy=False)
        return cls(name, array.shape, tag, lambda: array)

    @property
    def numel(self) -> int:
        """Number of elements."""
        return shape_numel(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the source data in bytes."""
        return self.numel * ITEMSIZE[self.dtype]

    def raw(self) -> np.ndarray:
        """The data in its source dtype (bf16 as uint16 bits), PyTorch shape."""
        data = self._load_raw()
        if tuple(data.shape) != self.shape:
            raise ConvertError(f"tensor '{self.name}': loaded shape {data.shape} "
                               f"differs from declared shape {self.shape}")
        return data

    def to_f32(self) -> np.ndarray:
        """The data as a float32 numpy array (exact for F32, F16 and BF16)."""
        return raw_to_f32(self.raw(), self.dtype)

    def renamed(self, name: str) -> "SourceTensor":
        """The same tensor (same lazy data) under another name."""
        return SourceTensor(name, self.shape, self.dtype, self._load_raw)

    def __repr__(self) -> str:
        return f"SourceTensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class Checkpoint:
    """The tensors of one input file and the open resources that back them.

    Use as a context manager; tensors cannot be loaded after :meth:`close`.

    Attributes:
        path: the file path.
        format: ``'pth'``, ``'safetensors'`` or ``'memory'``.
        tensors: dict of checkpoint name -> :class:`SourceTensor`, in file order.
        metadata: free-form string metadata of the file (may be empty).
    """

    def __init__(self, path: str, fmt: str, tensors, metadata=None,
                 closer: Callable[[], None] = None):
        self.path = path
        self.format = fmt
        self.tensors = dict(tensors)
        self.metadata = dict(metadata or {})
        self._closer = closer

    @classmethod
    def from_arrays(cls, arrays, path: str = "<memory>") -> "Checkpoint":
        """A checkpoint made of in-memory numpy arrays (name -> array)."""
        tensors = {k: SourceTensor.from_numpy(k, v) for k, v in arrays.items()}
        return cls(path, "memory", tensors)

    def close(self) -> None:
        """Release the file handles; idempotent."""
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
