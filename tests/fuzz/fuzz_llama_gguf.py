"""Fuzz the llama.cpp GGUF reader (convert/gguf_reader.py,
convert/llama_gguf.py) and the conversion of what it reads.

Contract: ``convert_file`` on any bytes either writes a GGUF file or raises
``ConvertError`` (or a subclass).  Seeds: tiny llama.cpp-layout files of
RWKV-6 and RWKV-7 (one and two layers, F32 and F16), written by our
``--layout llama.cpp`` exporter.

Run: ``python -m tests.fuzz.fuzz_llama_gguf --seconds N``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

from rwkv_cpp.convert import ConvertError, convert_file, save_safetensors
from rwkv_cpp.convert.llama_export import export_llama_file
from rwkv_cpp.convert.random_weights import make_state_dict

from . import _runner

WORLD_VOCAB = Path(__file__).resolve().parents[2] / "python" / "rwkv_cpp" / "data" / "rwkv_vocab_v20230424.txt"


def seeds(folder: str) -> List[bytes]:
    out = []
    for version in ("6.0", "7.0"):
        for n_layer, out_type in ((1, "FP32"), (2, "FP16")):
            src, dst = os.path.join(folder, "seed.safetensors"), os.path.join(folder, "seed.gguf")
            save_safetensors(src, make_state_dict(version, 16, 8, n_layer, head_size=4, n_ffn=16, seed=n_layer))
            export_llama_file(src, dst, str(WORLD_VOCAB), out_type)
            with open(dst, "rb") as f:
                out.append(f.read())
    return out


def one_input(data: bytes) -> None:
    src, dst = _runner.scratch_path("input.gguf"), _runner.scratch_path("output.gguf")
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
