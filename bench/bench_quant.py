"""What quantization costs and buys on a random 169M-shape RWKV-4 model
(L12 D768 V50277): file size, KL divergence and max-abs logit difference
against FP32, and decode ms/token, for every type, with the head kept in FP16
(the default) and quantized (--quantize-head).

    python -m bench.bench_quant [--threads 2] [--rounds 5] [--tokens 32]

Models are cached under bench/cache/ (the FP32 file is bench.harness's
169m model, the one bench.bench_speed times).  Correctness first: the KL
numbers are computed before any timing.  Decode is timed in rounds in this
process, interleaving the types so that machine noise hits them alike; the
median is reported.
"""

import argparse
import os
import statistics
import time

import rwkv_cpp
from rwkv_cpp.compare import compare_logits
from rwkv_cpp.quantize import quantize

from .harness import CACHE, N_VOCAB, bench_tokens, machine_line, median_range, print_table, rwkv4_files

TYPES = ["FP32", "FP16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
CHECK_TOKENS = 128


def variants(fp32):
    """[(row name, GGUF path)]: every type, the quantized ones with the head
    in FP16 and quantized; quantized again when older than the FP32 file."""
    out = []
    for t in TYPES:
        for qh in ([False] if t in ("FP32", "FP16") else [False, True]):
            path = CACHE / ("quant-rwkv4-169m-%s%s.gguf" % (t, "-qhead" if qh else ""))
            if t != "FP32" and (not path.exists() or path.stat().st_mtime < fp32.stat().st_mtime):
                print("quantizing %s ..." % path.name, flush=True)
                quantize(fp32, path, t, quantize_head=qh)
            out.append(("%s%s" % (t, " +head" if qh else ""), fp32 if t == "FP32" else path))
    return out


def decode_ms(model, tokens):
    state = model.eval(int(tokens[0]))[1]
    t0 = time.perf_counter()
    for tok in tokens:
        _, state = model.eval(int(tok), state, out_state=state)
    return 1e3 * (time.perf_counter() - t0) / len(tokens)


def main():
    ap = argparse.ArgumentParser(prog="python -m bench.bench_quant", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    fp32 = rwkv4_files("169m", ["FP32"])["FP32"]
    rows = variants(fp32)
    check = bench_tokens(N_VOCAB, CHECK_TOKENS, seed=0)
    with rwkv_cpp.Model(str(fp32), n_threads=args.threads) as m:
        ref = m.eval_sequence(check, all_logits=True)[0]
    models, quality = {}, {}
    for name, path in rows:
        models[name] = rwkv_cpp.Model(str(path), n_threads=args.threads)
        quality[name] = compare_logits(ref, models[name].eval_sequence(check, all_logits=True)[0])
    times = {name: [] for name, _ in rows}
    tokens = bench_tokens(N_VOCAB, args.tokens, seed=1)
    for _ in range(args.rounds):
        for name, _ in rows:
            times[name].append(decode_ms(models[name], tokens))
    base = statistics.median(times["FP32"])
    print("\n" + machine_line(args.threads))
    print_table(["type", "file MiB", "KL vs FP32 (mean)", "max-abs", "top-1 agree", "decode ms/token (median)",
                 "vs FP32"],
                [[name, "%.1f" % (os.path.getsize(path) / 2**20), "%.2e" % quality[name].kl_mean,
                  "%.3f" % quality[name].max_abs, "%.1f%%" % (100 * quality[name].top1_agreement),
                  median_range(times[name]), "%.2fx" % (base / statistics.median(times[name]))]
                 for name, path in rows])
    for m in models.values():
        m.close()


if __name__ == "__main__":
    main()
