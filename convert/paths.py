"""Output files: the checks every program runs on an output path before it
starts working (not the input, not a folder, in an existing writable
folder), and the atomic write (a temporary file renamed at the end), so a
failed or interrupted run never leaves a partial output.

The package's programs use these checks too (``rwkv_cpp._cli``), so each
rule is written once.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from typing import Callable

from .errors import OutputPathError

#: exit status of a command line stopped by Ctrl-C (128 + SIGINT, as shells report it)
EXIT_INTERRUPTED = 130


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one existing file (links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_folder(folder, what: str = "folder") -> None:
    """Raises OutputPathError unless ``folder`` is an existing folder where
    files can be created (tried: a nameless temporary file is made and
    dropped, which also catches read-only file systems and ACLs)."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise OutputPathError(f"{what} '{folder}' does not exist")
    if not os.path.isdir(folder):
        raise OutputPathError(f"{what} '{folder}' is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputPathError(f"cannot write in {what} '{folder}': {exc.strerror}") from None


def check_output_path(dst, sources=()) -> None:
    """Raises OutputPathError, naming ``dst``, unless a file can be written
    there: not one of ``sources`` (the inputs), not a folder, in an existing
    writable folder.  Run before the work, so that nothing is computed for
    an output that cannot be written."""
    path = os.fspath(dst)
    if not path:
        raise OutputPathError("the output path is empty")
    for src in sources:
        if same_file(src, path):
            raise OutputPathError(f"output '{path}' is the input file; choose another output path")
    if os.path.isdir(path):
        raise OutputPathError(f"output '{path}' is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        check_output_folder(folder)
    except OutputPathError as exc:
        raise OutputPathError(f"cannot write output '{path}': {exc}") from None


def write_file_atomically(dst: str, write: Callable[[object], int]) -> int:
    """Run ``write(fileobj)`` into a temporary file, then rename it to dst.

    ``dst`` is checked first (``check_output_path``).  On any error the
    temporary file is removed and dst is left untouched; errors name dst,
    never the temporary file.
    """
    check_output_path(dst)
    tmp = _temp_path_for(dst)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the output file '{dst}': "
                                 f"{exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            written = write(f)
            f.flush()
            os.fsync(f.fileno())
        _rename(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return written


def _rename(tmp: str, dst: str) -> None:
    try:
        os.replace(tmp, dst)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write the output file '{dst}': {exc.strerror}") from None


def _temp_path_for(dst: str) -> str:
    """A fresh hidden temporary name in the destination's directory."""
    folder, base = os.path.split(os.path.abspath(dst))
    return os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
