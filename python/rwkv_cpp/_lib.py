"""Loads the package's own shared library (by path, next to this file) and
exposes the cffi ``ffi`` and ``lib`` objects."""

import os
import sys

from cffi import FFI

from ._cdef import CDEF

ffi = FFI()
ffi.cdef(CDEF)


def _package_dirs():
    """The folders of this package: where this file is, and (for editable
    installs, whose compiled part stays in site-packages) every entry of the
    package's __path__ named like the package."""
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = [here]
    package = sys.modules.get(__package__)
    for entry in getattr(package, "__path__", []):
        entry = os.path.abspath(entry)
        if os.path.basename(entry) == "rwkv_cpp" and entry not in dirs:
            dirs.append(entry)
    return dirs


def _library_path():
    if sys.platform == "darwin":
        names = ["librwkv_cpp.dylib"]
    elif sys.platform == "win32":
        names = ["rwkv_cpp.dll"]
    else:
        names = ["librwkv_cpp.so"]
    dirs = _package_dirs()
    for folder in dirs:
        for name in names:
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return path
    raise ImportError(
        "rwkv_cpp: the native library is missing from %s; install the package "
        "with 'pip install .' so that it is built" % ", ".join(dirs))


lib = ffi.dlopen(_library_path())
