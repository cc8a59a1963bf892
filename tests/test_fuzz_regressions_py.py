"""Replay the inputs that the Python fuzz harnesses (or their review) found
failing, kept in tests/data/fuzz/<harness>/.

Converter inputs (pth, safetensors, legacy_bin) are damaged files: each must
give a ConvertError naming the file.  The other harnesses keep raw harness
inputs: each must pass the harness's contract (``one_input`` raises
nothing).  How each file was found is in docs/RELIABILITY.md.
"""

import importlib
import os

import pytest

from rwkv_cpp.convert import ConvertError, convert_file

from fuzz import _runner

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "fuzz")
CONVERTER_HARNESSES = ("pth", "safetensors", "legacy_bin")
PYTHON_HARNESSES = CONVERTER_HARNESSES + ("state_file", "embed_stats", "tokenizers")


def _cases():
    for harness in PYTHON_HARNESSES:
        folder = os.path.join(DATA, harness)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            yield pytest.param(harness, os.path.join(folder, name), id=f"{harness}/{name}")


def test_there_are_regression_files():
    assert len(list(_cases())) >= 3


@pytest.mark.parametrize("harness,path", list(_cases()))
def test_regression_file(harness, path, tmp_path):
    if harness in CONVERTER_HARNESSES:
        with pytest.raises(ConvertError, match=r"\S") as info:
            convert_file(path, tmp_path / "out.gguf")
        assert path in str(info.value)
        assert not (tmp_path / "out.gguf").exists()
        return
    module = importlib.import_module("fuzz.fuzz_" + harness)
    _runner.set_workdir(str(tmp_path))
    try:
        with open(path, "rb") as f:
            module.one_input(f.read())
    finally:
        _runner.set_workdir(None)
