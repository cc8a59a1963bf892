"""Exceptions raised by rwkv_cpp; each carries the C status and message."""

from ._lib import lib


class RWKVError(Exception):
    """An error reported by the rwkv_cpp library.

    Attributes:
        status: the ``enum rwkv_status`` value (int).
        message: the library's message.
    """

    def __init__(self, status, message):
        self.status = int(status)
        self.message = message
        super().__init__(message)


class InvalidArgumentError(RWKVError, ValueError):
    """Bad argument: token id out of range, wrong buffer length or dtype."""


class ModelIOError(RWKVError, OSError):
    """The model file is missing or cannot be read."""

    def __str__(self):
        return self.message


class ModelFormatError(RWKVError):
    """The file is not a valid model file (truncated, corrupt, bad tensor)."""


class UnsupportedModelError(RWKVError):
    """A valid file of a version or type this build does not support."""


class ModelMemoryError(RWKVError, MemoryError):
    """The library could not allocate memory."""


class ComputeError(RWKVError):
    """Graph computation failed."""


_BY_STATUS = {
    lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT: InvalidArgumentError,
    lib.RWKV_STATUS_ERROR_IO: ModelIOError,
    lib.RWKV_STATUS_ERROR_FILE_FORMAT: ModelFormatError,
    lib.RWKV_STATUS_ERROR_UNSUPPORTED: UnsupportedModelError,
    lib.RWKV_STATUS_ERROR_ALLOC: ModelMemoryError,
    lib.RWKV_STATUS_ERROR_COMPUTE: ComputeError,
}


def error_for(status, message):
    """The exception object for a non-OK status."""
    cls = _BY_STATUS.get(int(status), RWKVError)
    return cls(status, message)
