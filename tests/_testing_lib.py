"""The test hooks of src/rwkv_testing.h, loaded from librwkv_cpp_testing (the
library's code plus the hooks, installed beside librwkv_cpp and used only by
the tests) with the cdef generated from that header (_testing_cdef.py)."""

import os

from cffi import FFI

from _testing_cdef import TESTING_CDEF
from rwkv_cpp._cdef import CDEF
from rwkv_cpp._lib import _library_path


def testing_library_path():
    """librwkv_cpp_testing, in the folder of the package's librwkv_cpp."""
    folder, name = os.path.split(_library_path())
    return os.path.join(folder, name.replace("rwkv_cpp", "rwkv_cpp_testing", 1))


ffi = FFI()
ffi.cdef(CDEF)  # enum rwkv_status, used by the hooks
ffi.cdef(TESTING_CDEF)
lib = ffi.dlopen(testing_library_path())


def ptr(a, ctype="float *"):
    """A cffi pointer to a numpy array's buffer (no copy)."""
    return ffi.cast(ctype, ffi.from_buffer(a))
