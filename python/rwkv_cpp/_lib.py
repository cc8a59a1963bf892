"""Loads the package's own shared library (by path, next to this file) and
exposes the cffi ``ffi`` and ``lib`` objects."""

import importlib.util
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
        names = ["rwkv_cpp.dll", "librwkv_cpp.dll"]  # MSVC/clang-cl, MinGW
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


def _ggml_dirs():
    """The folders of the libggml-python package that may hold ggml's shared
    libraries (bin/ and lib/ on Windows); empty if it is not installed."""
    spec = importlib.util.find_spec("libggml")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for root in spec.submodule_search_locations:
        for sub in ("bin", "lib"):
            path = os.path.join(root, sub)
            if os.path.isdir(path):
                dirs.append(path)
    return dirs


# Windows has no RPATH: the DLLs the library links (ggml's, and its own
# folder's) are found through the process's DLL search path.  The handles are
# kept for the life of the process (closing one removes its folder).
_dll_directories = []


def _add_dll_directories(library_path):
    if sys.platform != "win32":
        return
    for folder in [os.path.dirname(library_path)] + _ggml_dirs():
        _dll_directories.append(os.add_dll_directory(folder))


_add_dll_directories(_library_path())
lib = ffi.dlopen(_library_path())
