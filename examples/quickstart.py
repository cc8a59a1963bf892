"""End-to-end example: make a small random RWKV-4 checkpoint in the official
format, convert it to GGUF with the torch-free converter, and evaluate it.

    python examples/quickstart.py [--workdir DIR]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import rwkv_cpp
from rwkv_cpp.convert import make_rwkv4_state_dict, save_safetensors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="where to write the files (default: a temp folder)")
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="rwkv_cpp_quickstart_")
    os.makedirs(workdir, exist_ok=True)

    ckpt = os.path.join(workdir, "tiny-rwkv4.safetensors")
    gguf = os.path.join(workdir, "tiny-rwkv4-FP16.gguf")
    print("1. writing a random RWKV-4 checkpoint (vocab 256, 4 layers, width 128): %s" % ckpt, flush=True)
    save_safetensors(ckpt, make_rwkv4_state_dict(n_vocab=256, n_embed=128, n_layer=4, seed=1), dtype="BF16")

    print("2. converting it: python -m rwkv_cpp.convert %s %s --type FP16" % (ckpt, gguf), flush=True)
    subprocess.run([sys.executable, "-m", "rwkv_cpp.convert", ckpt, gguf, "--type", "FP16"], check=True)

    print("3. evaluating it", flush=True)
    with rwkv_cpp.Model(gguf, n_threads=2) as model:
        print("   %r, state of %d floats" % (model, model.state_len), flush=True)
        prompt = list(b"To be, or not to be")
        t0 = time.perf_counter()
        logits, state = model.eval_sequence(prompt)
        t1 = time.perf_counter()
        out = []
        for _ in range(32):
            token = int(np.argmax(logits))
            out.append(token)
            logits, state = model.eval(token, state)
        t2 = time.perf_counter()
        print("   prefill: %d tokens in %.1f ms; decode: %.2f ms/token" % (
            len(prompt), 1e3 * (t1 - t0), 1e3 * (t2 - t1) / len(out)))
        print("   greedy continuation (token ids of a random model): %s" % out[:16], flush=True)
        print("   logits: min %.3f max %.3f, finite: %s" % (logits.min(), logits.max(), bool(np.isfinite(logits).all())), flush=True)
    print("done: files in %s" % workdir, flush=True)


if __name__ == "__main__":
    main()
