"""Fuzz the rwkv.cpp ``.bin`` reader (``convert/legacy_bin.py``), and the
runtime's loading of what it converts.

Contract: ``convert_file`` on any bytes either writes a GGUF file or
raises ``ConvertError``; a GGUF file it writes either loads as a
``rwkv_cpp.Model`` or is refused with an ``RWKVError``.

Run: ``python -m tests.fuzz.fuzz_legacy_bin --seconds N``.
"""

from __future__ import annotations

import os
import sys
from typing import List

import rwkv_cpp
from rwkv_cpp.convert import ConvertError, convert_file

from . import _runner, seeds as seed_files


def seeds(folder: str) -> List[bytes]:
    return [data for _, data in seed_files.legacy_bin_seeds()]


def one_input(data: bytes) -> None:
    src, dst = _runner.scratch_path("input.bin"), _runner.scratch_path("output.gguf")
    with open(src, "wb") as f:
        f.write(data)
    try:
        convert_file(src, dst)
    except ConvertError:
        return
    try:
        rwkv_cpp.Model(dst, n_threads=1).close()
    except rwkv_cpp.RWKVError:
        pass
    finally:
        os.unlink(dst)


if __name__ == "__main__":
    sys.exit(_runner.main(__spec__.name, seeds, one_input))
