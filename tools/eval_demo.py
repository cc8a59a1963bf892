"""Builds the demo model's files from the trained checkpoint and measures
them: converts demo/*.pth to FP32 GGUF, quantizes it to every type (emb and
head quantized too, as the shipped file is), and reports validation
perplexity on hamlet.txt + tempest.txt (each streamed from the initial
state; cross-entropy weighted by tokens) and LAMBADA.

    python tools/eval_demo.py [--out-dir DIR] [--types ...] [--lambada-types ...]

Prints a markdown table (for demo/MODEL_CARD.md and bench/RESULTS.md).
"""

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path

import rwkv_cpp
from rwkv_cpp.convert import convert_file
from rwkv_cpp.perplexity import lambada, perplexity
from rwkv_cpp.quantize import quantize
from rwkv_cpp.tokenizers import get as get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PTH = ROOT / "demo" / "rwkv4-shakespeare-L8-D192.pth"
VALIDATION = ("hamlet.txt", "tempest.txt")
TYPES = ["FP32", "FP16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]


def build(out_dir, types):
    f32 = out_dir / "demo-FP32.gguf"
    if not f32.exists():
        convert_file(str(PTH), str(f32), "FP32")
    paths = {"FP32": f32}
    for t in types:
        if t != "FP32":
            paths[t] = out_dir / ("demo-%s.gguf" % t)
            if not paths[t].exists():
                quantize(f32, paths[t], t, quantize_head=True, quantize_emb=True)
    return paths


def validation_ppl(model, tok):
    total, n = 0.0, 0
    for name in VALIDATION:
        tokens = tok.encode((SHARED / "shakespeare" / name).read_text(encoding="utf-8"))
        res = perplexity(model, tokens, chunk=256)
        total += res.cross_entropy * res.n_tokens
        n += res.n_tokens
    return n, total / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "cache" / "demo"))
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--lambada-types", nargs="*", default=["FP32", "Q8_0"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = build(out_dir, args.types)
    tok = get_tokenizer("20B")
    rows = []
    for t in args.types:
        t0 = time.perf_counter()
        with rwkv_cpp.Model(str(paths[t]), n_threads=args.threads) as m:
            n, ce = validation_ppl(m, tok)
            lam = None
            if t in args.lambada_types:
                lam = lambada(m, tok, str(SHARED / "eval" / "lambada_test.jsonl"))
        rows.append((t, os.path.getsize(paths[t]) / 2**20, n, ce, lam))
        print("%s done in %.0fs" % (t, time.perf_counter() - t0), file=sys.stderr, flush=True)
    print("\n%s; validation = hamlet.txt + tempest.txt (%d tokens scored), 20B tokenizer; "
          "emb and head quantized in the quantized files" % (datetime.date.today(), rows[0][2]))
    print("| type | file MiB | val cross-entropy (nats/token) | val perplexity | LAMBADA acc | LAMBADA ppl |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t, mib, n, ce, lam in rows:
        print("| %s | %.1f | %.4f | %.2f | %s | %s |" % (
            t, mib, ce, math.exp(ce), "%.2f%%" % (100 * lam.accuracy) if lam else "-",
            "%.1f" % lam.perplexity if lam else "-"))


if __name__ == "__main__":
    main()
