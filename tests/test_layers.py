"""The layers of the C++ code call in one direction (file ->
model -> graph -> context -> C API): nothing under src/ calls a function of
the C API (rwkv.h, implemented in rwkv.cpp)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def api_functions():
    header = (ROOT / "rwkv.h").read_text()
    return set(re.findall(r"RWKV_API\b[^;(]*?\b(rwkv_[a-z0-9_]+)\s*\(", header))


def test_api_functions_found():
    names = api_functions()
    assert {"rwkv_type_str", "rwkv_model_default_params", "rwkv_eval"} <= names


def test_src_does_not_call_the_api():
    names = api_functions()
    calls = re.compile(r"\b(%s)\s*\(" % "|".join(sorted(names)))
    found = []
    for path in sorted((ROOT / "src").glob("*.[ch]*")):
        text = re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.S)
        found += ["%s: %s" % (path.name, m) for m in calls.findall(text)]
    assert not found, found
