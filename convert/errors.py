"""Exceptions raised by the converter.

Every problem with an input file (corrupt archive, unsafe pickle, missing or
wrongly shaped tensor, unsupported RWKV version) is reported as a
:class:`ConvertError`, a subclass of :class:`ValueError`, with a message that
names the file member or tensor involved.
"""

from __future__ import annotations

import contextlib
from typing import Optional


class ConvertError(ValueError):
    """An input checkpoint cannot be read or converted."""


class OutputPathError(ConvertError):
    """An output path that cannot be written: the input itself, a folder,
    a missing or unwritable folder.  Raised before any work starts."""


class UnsafePickleError(ConvertError):
    """A pickle references a global that is not on the allow-list."""


class UnsupportedVersionError(ConvertError):
    """A valid checkpoint of an RWKV version (or file version) the converter
    cannot handle yet.

    Attributes:
        version: the detected version string ("5.2", "6.0", "7.0", ...), or
            None when the caller did not give one.
    """

    def __init__(self, message: str, version: Optional[str] = None):
        super().__init__(message)
        self.version = version


@contextlib.contextmanager
def naming_file(path: str):
    """Make every ConvertError raised inside name ``path``: an error from a
    step that sees only tensors (shape checks, transforms) gets the file
    name put in front of its message; its class and attributes are kept."""
    try:
        yield
    except ConvertError as exc:
        if exc.args and isinstance(exc.args[0], str) and path not in exc.args[0]:
            exc.args = (f"{path}: {exc.args[0]}",) + exc.args[1:]
        raise
