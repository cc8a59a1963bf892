"""Fuzz the torch-free ``.pth`` reader and the conversion of what it reads.

Contract: ``convert_file`` on any bytes either writes a GGUF file or
raises ``ConvertError`` (or a subclass).

An input is a mode byte and a payload.  Mode ``Z`` (and any other byte):
the payload is the whole ``.pth`` file, so mutations also hit the zip
structure.  Mode ``P``: the payload is one seed-model index byte and a
``data.pkl``; the harness zips it (with valid CRCs) together with that seed
model's storages, so mutations reach the restricted unpickler and the tensor
records behind the zip's checksums.

Run: ``python -m tests.fuzz.fuzz_pth --seconds N``.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import List

from rwkv_cpp.convert import ConvertError, convert_file

from . import _runner, seeds as seed_files


@functools.lru_cache(maxsize=None)
def _models():
    """(pickle, storages) of each seed model, F32."""
    return [seed_files.pth_members(sd) for _, sd in seed_files.seed_state_dicts()]


def seeds(folder: str) -> List[bytes]:
    raw = [b"Z" + data for _, data in seed_files.pth_seeds()]
    pickles = [b"P" + bytes([i]) + pkl for i, (pkl, _) in enumerate(_models())]
    return raw + pickles


def _file_bytes(data: bytes) -> bytes:
    if data[:1] == b"P" and len(data) >= 2:
        models = _models()
        _, storages = models[data[1] % len(models)]
        return seed_files.zip_pth(data[2:], storages)
    return data[1:]


def one_input(data: bytes) -> None:
    src, dst = _runner.scratch_path("input.pth"), _runner.scratch_path("output.gguf")
    with open(src, "wb") as f:
        f.write(_file_bytes(data))
    try:
        convert_file(src, dst)
    except ConvertError:
        pass
    if os.path.exists(dst):
        os.unlink(dst)


if __name__ == "__main__":
    sys.exit(_runner.main(__spec__.name, seeds, one_input))
