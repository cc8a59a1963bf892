"""Opening files made elsewhere: rwkv.cpp legacy ``.bin`` files (tensors
copied as stored, quantized blocks byte for byte) and llama.cpp's RWKV-6/7
GGUF files (names, layouts and metadata mapped to ours, docs/FORMAT.md) are
converted to a temporary GGUF file, which is what the runtime loads."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ._lib import lib
from .convert.checkpoint import open_gguf
from .convert.convert import convert_checkpoint
from .convert.errors import ConvertError, UnsupportedVersionError
from .convert.legacy_bin import is_legacy_bin, legacy_to_gguf
from .convert.llama_gguf import is_llama_gguf
from .errors import ModelFormatError, ModelIOError, UnsupportedModelError


#: the World vocabulary, to check a llama.cpp file's tokens against.
WORLD_VOCAB = Path(__file__).parent / "data" / "rwkv_vocab_v20230424.txt"


def is_legacy(path):
    """Whether ``path`` is an rwkv.cpp .bin or a llama.cpp GGUF file (both
    are loaded through a conversion)."""
    try:
        return is_legacy_bin(os.fspath(path)) or is_llama_gguf(os.fspath(path))
    except OSError:
        return False  # the runtime reports missing/unreadable files itself


def _convert(path, out):
    """rwkv.cpp .bin -> GGUF as stored; llama.cpp GGUF -> GGUF with the
    storage of its matrices (F32 stays FP32, F16/BF16 become FP16)."""
    if is_legacy_bin(path):
        legacy_to_gguf(path, out)
        return
    with open_gguf(path, str(WORLD_VOCAB)) as ckpt:
        out_type = "FP32" if ckpt.metadata.get("matrix_type") == "F32" else "FP16"
        convert_checkpoint(ckpt, out, out_type)


def convert_to_temp(path):
    """Converts a legacy file into a new temporary folder; returns
    (gguf_path, folder).  Errors become rwkv_cpp exceptions; on any error
    (an interrupt included) the folder is removed."""
    folder = tempfile.mkdtemp(prefix="rwkv_cpp_legacy_")
    out = os.path.join(folder, "model.gguf")
    try:
        _convert(os.fspath(path), out)
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        error = _as_model_error(path, exc)
        if error is None:
            raise
        raise error from None
    return out, folder


def _as_model_error(path, exc):
    """The rwkv_cpp exception for a failed conversion; None for other
    exceptions (an interrupt, a bug), which pass unchanged."""
    if isinstance(exc, UnsupportedVersionError):
        return UnsupportedModelError(lib.RWKV_STATUS_ERROR_UNSUPPORTED, str(exc))
    if isinstance(exc, ConvertError):
        return ModelFormatError(lib.RWKV_STATUS_ERROR_FILE_FORMAT, str(exc))
    if isinstance(exc, OSError):
        return ModelIOError(lib.RWKV_STATUS_ERROR_IO, "%s: %s" % (path, exc))
    return None


@contextlib.contextmanager
def as_gguf(path):
    """Yields a GGUF path for ``path``: itself, or a temporary conversion of
    an rwkv.cpp .bin or a llama.cpp GGUF file (removed afterwards)."""
    if not is_legacy(path):
        yield path
        return
    out, folder = convert_to_temp(path)
    try:
        yield out
    finally:
        shutil.rmtree(folder, ignore_errors=True)
