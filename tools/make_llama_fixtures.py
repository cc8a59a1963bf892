"""Re-make the committed llama.cpp fixtures of tests/data/llama_cpp/.

For RWKV-6 and RWKV-7: a tiny random official checkpoint (seeded, so the
tests re-make it), written as a Hugging Face folder (convert/hf_layout.py),
converted by llama.cpp's own ``convert_hf_to_gguf.py`` (``--outtype f32``)
into ``rwkv{6,7}-tiny.gguf``, and llama.cpp's logits for TOKENS on that
file (through llama-cpp-python) saved as ``rwkv{6,7}-tiny-logits.npy``
(float32, one row per token, every token fed in one sequence).

Needs a llama.cpp source tree (its converter and gguf-py, and torch,
transformers for the converter) and llama-cpp-python; run from the
repository root:

    python tools/make_llama_fixtures.py --llama-cpp PATH/TO/llama.cpp

The sizes are chosen to keep each file under 1 MB while covering what the
layouts transform: a head size of 64 (llama.cpp's CPU WKV kernels step
through a head 64 floats at a time with AVX-512, so smaller heads are out
of bounds there), v6 with ``rescale_every`` 1 (every layer's output and
FFN value matrices rescaled) and v7 with 3 layers (the value residual).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "llama_cpp"
WORLD_VOCAB = ROOT / "python" / "rwkv_cpp" / "data" / "rwkv_vocab_v20230424.txt"

#: the fixtures: random-checkpoint arguments (the LoRA ranks are the
#: defaults: v6 32 and 64, as llama.cpp's converter requires; v7 32) and the
#: HF rescale_every.
FIXTURES = {
    "rwkv6": {"version": "6.0", "n_vocab": 320, "n_embed": 64, "n_layer": 2, "n_ffn": 128,
              "head_size": 64, "seed": 61, "rescale_every": 1},
    "rwkv7": {"version": "7.0", "n_vocab": 320, "n_embed": 64, "n_layer": 3, "n_ffn": 128,
              "head_size": 64, "seed": 71},
}
#: the token list of the logits files.
TOKENS = [1, 5, 300, 7, 9, 100, 42, 0, 319, 200, 13, 261]


def make_state_dict(spec: dict):
    """The official state dict of a fixture (the tests make it the same way,
    from fixtures.json)."""
    from rwkv_cpp.convert.random_weights import make_state_dict as make

    return make(spec["version"], spec["n_vocab"], spec["n_embed"], spec["n_layer"], spec["head_size"],
                spec["n_ffn"], spec["seed"])


#: run in a child process: llama_cpp's libllama must not meet the libggml
#: that rwkv_cpp has loaded (another ggml build: missing symbols).
_LOGITS_CHILD = """
import sys, numpy as np, llama_cpp
path, out, tokens = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
llm = llama_cpp.Llama(model_path=path, logits_all=True, verbose=False, n_ctx=256, n_threads=1,
                      n_batch=len(tokens))
llm.eval(tokens)
np.save(out, np.array(llm.scores[:len(tokens)], dtype=np.float32))
"""


def llama_logits(path: Path, tokens, out: Path) -> None:
    """Save llama.cpp's logits of every token of ``tokens`` (one sequence)."""
    subprocess.run([sys.executable, "-c", _LOGITS_CHILD, str(path), str(out), ",".join(map(str, tokens))],
                   check=True)


def make_fixture(name: str, spec: dict, llama_cpp_dir: Path, work: Path) -> None:
    from rwkv_cpp.convert.hf_layout import write_hf_folder

    folder = work / name
    write_hf_folder(make_state_dict(spec), str(folder), str(WORLD_VOCAB),
                    rescale_every=spec.get("rescale_every", 0))
    gguf = OUT / f"{name}-tiny.gguf"
    subprocess.run([sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(folder),
                    "--outtype", "f32", "--outfile", str(gguf)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    llama_logits(gguf, TOKENS, OUT / f"{name}-tiny-logits.npy")
    print(f"{gguf.relative_to(ROOT)}: {gguf.stat().st_size} bytes")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", required=True, type=Path, metavar="DIR",
                    help="llama.cpp source tree (with convert_hf_to_gguf.py)")
    args = ap.parse_args(argv)
    if not (args.llama_cpp / "convert_hf_to_gguf.py").is_file():
        print(f"error: {args.llama_cpp} has no convert_hf_to_gguf.py", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for name, spec in FIXTURES.items():
            make_fixture(name, spec, args.llama_cpp, Path(work))
    (OUT / "fixtures.json").write_text(json.dumps({"fixtures": FIXTURES, "tokens": TOKENS}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
