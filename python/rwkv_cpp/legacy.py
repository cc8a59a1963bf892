"""Opening rwkv.cpp legacy ``.bin`` files: they are converted to a temporary
GGUF file (tensors copied as stored, quantized blocks byte for byte), which
is what the runtime loads."""

import contextlib
import os
import shutil
import tempfile

from ._lib import lib
from .convert.errors import ConvertError, UnsupportedVersionError
from .convert.legacy_bin import is_legacy_bin, legacy_to_gguf
from .errors import ModelFormatError, ModelIOError, UnsupportedModelError


def is_legacy(path):
    try:
        return is_legacy_bin(os.fspath(path))
    except OSError:
        return False  # the runtime reports missing/unreadable files itself


def convert_to_temp(path):
    """Converts a legacy file into a new temporary folder; returns
    (gguf_path, folder).  Errors become rwkv_cpp exceptions; on any error
    (an interrupt included) the folder is removed."""
    folder = tempfile.mkdtemp(prefix="rwkv_cpp_legacy_")
    out = os.path.join(folder, "model.gguf")
    try:
        legacy_to_gguf(os.fspath(path), out)
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
    an rwkv.cpp .bin (removed afterwards)."""
    if not is_legacy(path):
        yield path
        return
    out, folder = convert_to_temp(path)
    try:
        yield out
    finally:
        shutil.rmtree(folder, ignore_errors=True)
