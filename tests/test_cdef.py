"""The Python package's cffi declarations must match rwkv.h."""

import os
import re

from rwkv_cpp._cdef import CDEF

HEADER = os.path.join(os.path.dirname(__file__), os.pardir, "rwkv.h")


def _normalise(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = text.replace("RWKV_API", " ")
    return " ".join(re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\d+|[^\sA-Za-z0-9_]", text))


def test_cdef_matches_header():
    header = open(HEADER).read()
    block = header.split("/* RWKV_CDEF_BEGIN")[1].split("*/", 1)[1].split("/* RWKV_CDEF_END */")[0]
    assert _normalise(block) == _normalise(CDEF)


def test_every_function_is_exported():
    from rwkv_cpp._lib import lib
    names = re.findall(r"\b(rwkv_[a-z_0-9]+)\s*\(", CDEF)
    assert len(names) > 15
    for name in names:
        assert getattr(lib, name) is not None
