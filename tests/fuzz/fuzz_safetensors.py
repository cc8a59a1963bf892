"""Fuzz the safetensors reader and the conversion of what it reads.

Contract: ``convert_file`` on any bytes either writes a GGUF file or
raises ``ConvertError`` (or a subclass).  The input is the whole file (its
JSON header is text, so byte mutations reach the header parser directly).

Run: ``python -m tests.fuzz.fuzz_safetensors --seconds N``.
"""

from __future__ import annotations

import os
import sys
from typing import List

from rwkv_cpp.convert import ConvertError, convert_file

from . import _runner, seeds as seed_files


def seeds(folder: str) -> List[bytes]:
    return [data for _, data in seed_files.safetensors_seeds(folder)]


def one_input(data: bytes) -> None:
    src, dst = _runner.scratch_path("input.safetensors"), _runner.scratch_path("output.gguf")
    with open(src, "wb") as f:
        f.write(data)
    try:
        convert_file(src, dst)
    except ConvertError:
        pass
    if os.path.exists(dst):
        os.unlink(dst)


if __name__ == "__main__":
    sys.exit(_runner.main(__spec__.name, seeds, one_input))
