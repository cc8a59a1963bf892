"""The installed distribution: its name on the package index and its wheel
tag.  The package loads its library with cffi in ABI mode (no CPython
extension), so its wheel is tagged py3-none-<platform>, one wheel for every
Python 3.  tools/check_wheel.sh runs this file against the manylinux wheel,
CI's test stage against the wheel that ``pip install .`` builds."""

import os
from importlib import metadata

import rwkv_cpp
from rwkv_cpp import _lib

DISTRIBUTION = "rwkv-ggml"  # "rwkv-cpp" on the index is an unrelated project


def _wheel_tags():
    text = metadata.distribution(DISTRIBUTION).read_text("WHEEL")
    assert text is not None, "the installed %s has no WHEEL file" % DISTRIBUTION
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


def test_distribution_name_and_import_name():
    dist = metadata.distribution(DISTRIBUTION)
    assert dist.metadata["Name"] == DISTRIBUTION
    assert (dist.read_text("top_level.txt") or "rwkv_cpp").split() == ["rwkv_cpp"]
    # the package imported is the one this distribution installed
    assert os.path.isdir(os.path.dirname(rwkv_cpp.__file__))


def test_wheel_tag_is_py3_none_platform():
    tags = _wheel_tags()
    assert tags, "no Tag line in WHEEL"
    for tag in tags:
        python, abi, platform = tag.split("-")
        assert (python, abi) == ("py3", "none"), tag
        assert platform != "any", "the wheel holds a native library: %s" % tag


def test_library_beside_the_package():
    folder = os.path.dirname(_lib._library_path())
    assert os.path.basename(folder) == "rwkv_cpp"
