"""Exceptions raised by the converter.

Every problem with an input file (corrupt archive, unsafe pickle, missing or
wrongly shaped tensor, unsupported RWKV version) is reported as a
:class:`ConvertError`, a subclass of :class:`ValueError`, with a message that
names the file member or tensor involved.
"""

from __future__ import annotations

from typing import Optional


class ConvertError(ValueError):
    """An input checkpoint cannot be read or converted."""


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
