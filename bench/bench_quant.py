"""What quantization costs and buys on a random 169M-shape RWKV-4 model
(L12 D768 V50277): file size, KL divergence and max-abs logit difference
against FP32, and decode ms/token, for every type, with the head kept in FP16
(the default) and quantized (--quantize-head).

    python bench/bench_quant.py [--threads 2] [--rounds 5] [--tokens 32]

Models are cached under bench/cache/ (the FP32 file is made by
bench_decode.py's generator).  Correctness first: the KL numbers are
computed before any timing.  Decode is timed in rounds, interleaving the
types so that machine noise hits them alike; the median is reported.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rwkv_cpp  # noqa: E402
from rwkv_cpp.compare import compare_logits  # noqa: E402
from rwkv_cpp.quantize import quantize  # noqa: E402
from bench_speed import ggml_build  # noqa: E402

TYPES = ["FP32", "FP16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
CHECK_TOKENS = 128


def fp32_model():
    from bench_decode import FULL, build_models
    return build_models(FULL)["FP32"]


def variants(fp32):
    out = []
    for t in TYPES:
        heads = [False] if t in ("FP32", "FP16") else [False, True]
        for qh in heads:
            name = "%s%s" % (t, " +head" if qh else "")
            path = HERE / "cache" / ("rwkv4-169m-shape-%s%s.gguf" % (t, "-qhead" if qh else ""))
            if t != "FP32" and (not path.exists() or path.stat().st_mtime < fp32.stat().st_mtime):
                print("quantizing %s ..." % path.name, flush=True)
                quantize(fp32, path, t, quantize_head=qh)
            out.append((name, fp32 if t == "FP32" else path))
    return out


def decode_ms(model, tokens):
    state = model.eval(int(tokens[0]))[1]
    t0 = time.perf_counter()
    for tok in tokens:
        _, state = model.eval(int(tok), state, out_state=state)
    return 1e3 * (time.perf_counter() - t0) / len(tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    fp32 = fp32_model()
    rows = variants(fp32)
    rng = np.random.default_rng(0)
    check = rng.integers(0, 50277, CHECK_TOKENS)
    with rwkv_cpp.Model(str(fp32), n_threads=args.threads) as m:
        ref = m.eval_sequence(check, all_logits=True)[0]
    models, quality = {}, {}
    for name, path in rows:
        models[name] = rwkv_cpp.Model(str(path), n_threads=args.threads)
        quality[name] = compare_logits(ref, models[name].eval_sequence(check, all_logits=True)[0])
    times = {name: [] for name, _ in rows}
    tokens = rng.integers(0, 50277, args.tokens)
    for _ in range(args.rounds):
        for name, _ in rows:
            times[name].append(decode_ms(models[name], tokens))
    base = statistics.median(times["FP32"])
    print("\n%s, %s, %d threads, ggml: %s" % (datetime.date.today(), platform.processor() or platform.machine(),
                                               args.threads, ggml_build()))
    print("| type | file MiB | KL vs FP32 (mean) | max-abs | top-1 agree | decode ms/token (median) | vs FP32 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, path in rows:
        q, t = quality[name], statistics.median(times[name])
        print("| %s | %.1f | %.2e | %.3f | %.1f%% | %.2f (%.2f-%.2f) | %.2fx |" % (
            name, os.path.getsize(path) / 2**20, q.kl_mean, q.max_abs, 100 * q.top1_agreement,
            t, min(times[name]), max(times[name]), base / t))
    for m in models.values():
        m.close()


if __name__ == "__main__":
    main()
