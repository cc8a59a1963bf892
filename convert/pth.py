"""Read official PyTorch ``.pth`` checkpoints without torch, safely.

A ``.pth`` written by ``torch.save`` (torch >= 1.6) is a zip archive::

    <prefix>/data.pkl        the pickled object (here: a state dict)
    <prefix>/data/<key>      one raw little-endian storage per key
    <prefix>/byteorder       'little' or 'big' (absent in old files: little)

The pickle is loaded by :class:`_RestrictedUnpickler`, whose ``find_class``
allows only the handful of globals a plain tensor state dict needs; any
other global (``os.system``, ``builtins.eval``, ...) raises
:class:`UnsafePickleError` before anything is called, so the file's code
never runs.  Tensors come back as lazy :class:`SourceTensor` objects: a
storage is read from the archive only when its tensor is loaded.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import pickletools
import warnings
import zipfile
import zlib
from typing import Dict, Tuple

import numpy as np

from .errors import ConvertError, UnsafePickleError
from .formats import LEGACY_TORCH_MAGIC
from .tensors import ITEMSIZE, RAW_NUMPY_DTYPES, Checkpoint, SourceTensor

try:
    from lzma import LZMAError
except ImportError:  # a Python built without lzma: zipfile cannot raise it either
    class LZMAError(Exception):
        """Placeholder for lzma.LZMAError."""

#: data.pkl of a state dict is small; refuse absurd sizes (zip bombs).
MAX_PICKLE_BYTES = 1 << 30

#: torch storage classes -> source dtype; None: known but unsupported dtype.
STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "ByteStorage": None,
    "CharStorage": None,
    "ShortStorage": None,
    "IntStorage": None,
    "LongStorage": None,
    "BoolStorage": None,
}


class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only a dtype marker."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """One ``data/<key>`` member of the archive, read on demand."""

    def __init__(self, archive: "_Archive", member: str, type_name: str,
                 dtype: str, numel: int):
        self.archive = archive
        self.member = member
        self.type_name = type_name
        self.dtype = dtype
        self.numel = numel

    def read(self, first: int = 0, count: int = None) -> np.ndarray:
        """Elements [first, first + count) of the storage as a 1-D numpy
        array of its raw dtype (default: all of it).

        The whole storage is read with the zip's CRC check; a part of it (a
        view into a larger storage) is read by seeking, without reading the
        rest.
        """
        count = self.numel - first if count is None else count
        item = ITEMSIZE[self.dtype]
        if first == 0 and count == self.numel:
            data = self.archive.read_member(self.member, self.numel * item)
        else:
            data = self.archive.read_range(self.member, first * item, count * item)
        return np.frombuffer(data, dtype=RAW_NUMPY_DTYPES[self.dtype], count=count)


class _TensorRef:
    """A tensor rebuilt from the pickle: storage + offset + size + stride."""

    def __init__(self, storage, offset: int, size: Tuple[int, ...],
                 stride: Tuple[int, ...], storage_type_name: str):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.storage_type_name = storage_type_name


def _int_tuple(value, what: str) -> Tuple[int, ...]:
    """Check that a pickled size/stride is a tuple of non-negative ints."""
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ConvertError(f"corrupt tensor record: {what} is {value!r}, "
                           "expected a tuple of non-negative integers")
    return tuple(value)


def _checked_ref(storage, storage_offset, size, stride) -> "_TensorRef":
    """A _TensorRef after checking every field's type and sign."""
    if not isinstance(storage, (_Storage, _UnsupportedStorage)):
        raise ConvertError(f"corrupt tensor record: storage is {type(storage).__name__}")
    if (not isinstance(storage_offset, int) or isinstance(storage_offset, bool)
            or storage_offset < 0):
        raise ConvertError(f"corrupt tensor record: storage offset {storage_offset!r}")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise ConvertError(f"corrupt tensor record: size {size} and stride {stride} "
                           "have different lengths")
    return _TensorRef(storage, storage_offset, size, stride, storage.type_name)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: returns a _TensorRef."""
    return _checked_ref(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stand-in for ``torch._utils._rebuild_parameter[_with_state]``."""
    if not isinstance(data, _TensorRef):
        raise ConvertError(f"corrupt parameter record: data is {type(data).__name__}")
    return data


class _UnsupportedStorage:
    """A storage of a dtype the converter does not read (int, bool, ...)."""

    def __init__(self, type_name: str):
        self.type_name = type_name


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})

#: what reading a damaged zip archive raises: zipfile's own errors, a bad
#: filename or field (UnicodeDecodeError and other ValueErrors), an unknown
#: compression method or zip version (NotImplementedError), an encrypted
#: member (RuntimeError), a bad offset (OSError), and the decompressors'.
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError,
               RuntimeError, zlib.error, LZMAError)


@contextlib.contextmanager
def _zip_errors(path: str, what: str):
    """Turn the errors of a damaged archive into a ConvertError naming the
    file and ``what`` was being read (the original stays chained)."""
    try:
        yield
    except _ZIP_ERRORS as exc:
        raise ConvertError(f"{path}: {what}: the file is truncated or corrupt, or uses a zip "
                           f"feature torch.save never writes ({type(exc).__name__}: {exc})") from exc


class _Archive:
    """The open zip archive of a .pth file and its storage members."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "rb")  # OSError: the input cannot be opened
        try:
            with _zip_errors(path, "not a valid zip archive"):
                self.zip = zipfile.ZipFile(self.file)
            self.infos = {info.filename: info for info in self.zip.infolist()}
            self.prefix = self._find_prefix()
        except BaseException:
            self.close()
            raise

    def _find_prefix(self) -> str:
        """The '<prefix>/' that holds data.pkl (torch uses the archive name)."""
        pickles = [n for n in self.infos if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            found = "none" if not pickles else ", ".join(sorted(pickles))
            raise ConvertError(f"{self.path}: expected exactly one data.pkl member "
                               f"in the zip archive, found {found}; not a torch.save file")
        return pickles[0][: -len("data.pkl")]

    def check_byteorder(self) -> None:
        """Refuse big-endian archives (absent 'byteorder' means little)."""
        info = self.infos.get(self.prefix + "byteorder")
        if info is None:
            return
        order = self.read_member(info.filename, None, limit=64).decode("ascii", "replace")
        if order.strip() != "little":
            raise ConvertError(f"{self.path}: byteorder is {order.strip()!r}; only "
                               "little-endian checkpoints are supported")

    def member_size(self, member: str) -> int:
        """Uncompressed size of a member; ConvertError naming it if absent."""
        info = self.infos.get(member)
        if info is None:
            raise ConvertError(f"{self.path}: storage member '{member}' is missing "
                               "from the zip archive")
        return info.file_size

    def read_member(self, member: str, expected: int = None, limit: int = None) -> bytes:
        """Read one member, checking its size before and after reading."""
        size = self.member_size(member)
        if expected is not None and size != expected:
            raise ConvertError(f"{self.path}: member '{member}' holds {size} bytes, "
                               f"expected {expected}")
        if limit is not None and size > limit:
            raise ConvertError(f"{self.path}: member '{member}' is {size} bytes, "
                               f"more than the limit of {limit}")
        with _zip_errors(self.path, f"cannot read member '{member}'"):
            data = self.zip.read(member)
        if len(data) != size:
            raise ConvertError(f"{self.path}: member '{member}' is truncated "
                               f"({len(data)} of {size} bytes)")
        return data

    def read_range(self, member: str, start: int, nbytes: int) -> bytes:
        """Read ``nbytes`` bytes at ``start`` of a member (bounds already checked)."""
        with _zip_errors(self.path, f"cannot read member '{member}'"):
            with self.zip.open(member) as f:
                f.seek(start)
                data = f.read(nbytes)
        if len(data) != nbytes:
            raise ConvertError(f"{self.path}: member '{member}' is truncated")
        return data

    def close(self) -> None:
        """Close the zip file; idempotent."""
        if getattr(self, "zip", None) is not None:
            self.zip.close()
        self.file.close()


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds plain tensor state dicts.

    ``find_class`` resolves a global only if it is on the allow-list and
    returns our own stand-ins for torch's functions; ``persistent_load``
    turns ``('storage', type, key, location, numel)`` records into lazy
    storages of the archive.
    """

    def __init__(self, file, archive: _Archive):
        super().__init__(file)
        self._archive = archive
        self._storages: Dict[str, object] = {}

    def find_class(self, module: str, name: str):
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load: the pickle references global '{module}.{name}', "
                "which a plain tensor state dict never needs (nothing from the "
                "file was executed)")
        return obj

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ConvertError(f"corrupt pickle: unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ConvertError(f"corrupt pickle: storage type {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ConvertError(f"corrupt pickle: storage record {pid!r}")
        if key not in self._storages:
            self._storages[key] = self._make_storage(storage_type, key, numel)
        storage = self._storages[key]
        if getattr(storage, "numel", numel) != numel:
            raise ConvertError(f"corrupt pickle: storage '{key}' declared with "
                               "two different sizes")
        return storage

    def _make_storage(self, storage_type: _StorageType, key: str, numel: int):
        """Check a storage member's size now; read its bytes later."""
        if storage_type.dtype is None:
            return _UnsupportedStorage(storage_type.name)
        member = f"{self._archive.prefix}data/{key}"
        expected = numel * ITEMSIZE[storage_type.dtype]
        size = self._archive.member_size(member)
        if size != expected:
            raise ConvertError(
                f"{self._archive.path}: storage '{member}' holds {size} bytes but "
                f"the pickle declares {numel} x {storage_type.name} = {expected} bytes")
        return _Storage(self._archive, member, storage_type.name,
                        storage_type.dtype, numel)


def _check_bounds(name: str, ref: _TensorRef) -> None:
    """Every element the tensor addresses must lie inside its storage."""
    numel_storage = ref.storage.numel
    if any(d == 0 for d in ref.size):
        return
    numel = 1
    for d in ref.size:
        numel *= d
    if numel > numel_storage:
        # only a broadcast (stride 0) view can do this; refusing it bounds
        # the memory a crafted file can make us allocate by the file size
        raise ConvertError(
            f"tensor '{name}': size {ref.size} has {numel} elements, more than its "
            f"storage of {numel_storage}; broadcast (expanded) tensors are not supported")
    last = ref.offset + sum((d - 1) * s for d, s in zip(ref.size, ref.stride))
    if last >= numel_storage:
        raise ConvertError(
            f"tensor '{name}': size {ref.size}, stride {ref.stride} and offset "
            f"{ref.offset} address element {last}, beyond its storage of "
            f"{numel_storage} elements")


def _contiguous_strides(size: Tuple[int, ...]) -> Tuple[int, ...]:
    """Row-major element strides of a shape."""
    strides, step = [], 1
    for d in reversed(size):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def _make_loader(name: str, ref: _TensorRef, path: str):
    """A closure that reads the storage and returns the tensor's data."""

    def load() -> np.ndarray:
        try:
            return _read_tensor(ref)
        except ConvertError:
            raise
        except (ValueError, OverflowError) as exc:
            # the records were checked when the file was opened: this is a
            # numpy refusal of a record that passed them, reported by name
            raise ConvertError(f"{path}: cannot read tensor '{name}' (size {ref.size}, stride "
                               f"{ref.stride}, offset {ref.offset}): {type(exc).__name__}: "
                               f"{exc}") from exc

    return load


def _read_tensor(ref: _TensorRef) -> np.ndarray:
    """The data a checked tensor record addresses, as a contiguous array."""
    numel = 1
    for d in ref.size:
        numel *= d
    if numel == 0:
        return np.zeros(ref.size, dtype=RAW_NUMPY_DTYPES[ref.storage.dtype])
    # Read only the span of the storage this tensor addresses.
    span = 1 + sum((d - 1) * s for d, s in zip(ref.size, ref.stride))
    flat = ref.storage.read(ref.offset, span)
    if ref.stride == _contiguous_strides(ref.size):
        return flat.reshape(ref.size)
    # A view (transposed, sliced, expanded): walk the span with numpy's
    # stride machinery, then copy into a fresh contiguous array.
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat, shape=ref.size, strides=tuple(s * item for s in ref.stride),
        writeable=False)
    return np.array(view, copy=True)


def _to_source_tensor(name: str, value, path: str) -> SourceTensor:
    """Turn one unpickled state-dict entry into a lazy SourceTensor."""
    if not isinstance(value, _TensorRef):
        hint = ""
        if name in ("_strategy", "_version", "_rescale_layer"):
            hint = (" (this file was already converted by the rwkv pip package for "
                    "a strategy; convert the original checkpoint instead)")
        raise ConvertError(f"{path}: entry '{name}' is a {type(value).__name__}, "
                           f"not a tensor{hint}")
    # check again: a crafted pickle could have altered the record (BUILD)
    value = _checked_ref(value.storage, value.offset, value.size, value.stride)
    if isinstance(value.storage, _UnsupportedStorage):
        raise ConvertError(f"{path}: tensor '{name}' has storage type "
                           f"torch.{value.storage_type_name}; only float32, float16, "
                           "bfloat16 and float64 tensors are supported")
    _check_bounds(name, value)
    return SourceTensor(name, value.size, value.storage.dtype, _make_loader(name, value, path))


#: how deep a training checkpoint may nest its state dict ('state_dict',
#: 'model', 'module' inside each other); real ones use one or two levels.
MAX_STATE_DICT_NESTING = 8


def _state_dict_of(obj, path: str) -> dict:
    """The flat name -> tensor dict inside the unpickled object.

    A plain state dict is used as is; a training checkpoint that nests it
    under 'state_dict', 'model' or 'module' (and holds no tensors at the top
    level) is unwrapped, up to MAX_STATE_DICT_NESTING levels.
    """
    for _ in range(MAX_STATE_DICT_NESTING + 1):
        if not isinstance(obj, dict):
            raise ConvertError(f"{path}: the pickle holds a {type(obj).__name__}, "
                               "expected a state dict (name -> tensor)")
        inner = None
        if not any(isinstance(v, _TensorRef) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "module")
                          if isinstance(obj.get(k), dict)), None)
        if inner is None:
            bad = [k for k in obj if not isinstance(k, str)]
            if bad:
                raise ConvertError(f"{path}: state dict key {bad[0]!r} is not a string")
            return obj
        obj = inner
    raise ConvertError(f"{path}: the state dict is nested more than "
                       f"{MAX_STATE_DICT_NESTING} levels deep in 'state_dict'/'model'/'module'")


def check_not_legacy(path: str) -> None:
    """Raise a clear error for files in torch's legacy non-zip format."""
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if head == LEGACY_TORCH_MAGIC:
        raise ConvertError(
            f"{path}: legacy PyTorch serialization format (torch < 1.6 or "
            "_use_new_zipfile_serialization=False); only the zip format is read. "
            "Re-save it with a recent torch: torch.save(torch.load(old, "
            "weights_only=True), new)")


def open_pth(path: str) -> Checkpoint:
    """Open a torch.save zip checkpoint; tensors are loaded lazily.

    Raises:
        ConvertError: legacy format, corrupt or truncated archive, bad records.
        UnsafePickleError: the pickle references a disallowed global.
    """
    path = str(path)
    check_not_legacy(path)
    archive = _Archive(path)
    try:
        archive.check_byteorder()
        pkl = archive.read_member(archive.prefix + "data.pkl", limit=MAX_PICKLE_BYTES)
        obj = _unpickle(pkl, archive)
        state = _state_dict_of(obj, path)
        tensors = {name: _to_source_tensor(name, v, path) for name, v in state.items()}
    except BaseException:
        archive.close()
        raise
    return Checkpoint(path, "pth", tensors, closer=archive.close)


#: the opcodes that store into or fetch from the unpickler's memo, whose
#: argument is a memo index.
_MEMO_OPCODES = frozenset(("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"))


def _check_memo_indices(data: bytes, path: str) -> None:
    """Refuse memo indices larger than the pickle itself.

    The C unpickler grows its memo table to the largest index it is given,
    so a 5-byte ``LONG_BINPUT 2**31`` would allocate gigabytes; a real
    pickle numbers its memo entries 0, 1, 2, ..., each from an opcode of at
    least two bytes, so its indices stay below its length.
    """
    try:
        with warnings.catch_warnings():
            # a damaged text-mode STRING argument is a DeprecationWarning of
            # codecs.escape_decode, not something to show the user
            warnings.simplefilter("ignore", DeprecationWarning)
            ops = list(pickletools.genops(data))
    except (ValueError, TypeError) as exc:  # an unknown opcode, a bad argument
        raise ConvertError(f"{path}: corrupt data.pkl ({type(exc).__name__}: {exc})") from exc
    for opcode, arg, pos in ops:
        if opcode.name in _MEMO_OPCODES and not 0 <= int(arg) < len(data):
            raise ConvertError(f"{path}: corrupt data.pkl: memo index {arg} at byte {pos} "
                               f"of a {len(data)}-byte pickle")


def _unpickle(data: bytes, archive: _Archive):
    """Run the restricted unpickler, mapping pickle errors to ConvertError."""
    _check_memo_indices(data, archive.path)
    try:
        return _RestrictedUnpickler(io.BytesIO(data), archive).load()
    except ConvertError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, OverflowError,
            AttributeError, IndexError, KeyError, RecursionError) as exc:
        raise ConvertError(f"{archive.path}: corrupt data.pkl "
                           f"({type(exc).__name__}: {exc})") from exc
