"""Speed of rwkv_cpp on random-weight RWKV-4 models of the 169M, 430M and
1.5B shapes: decode ms/token against the memory-bandwidth floor, prefill
tokens/s at 128 and 512 tokens, peak RSS and load time, per format.

    python bench/bench_speed.py [--models 169m 430m 1.5b] [--types FP16 Q8_0 Q5_1 Q4_0]
                                [--kernels packed ggml] [--threads 2] [--procs 3] [--smoke]

Method:
1. models are generated once (official key names, random weights, numpy;
   no torch), converted to FP16 GGUF and quantized; cached in bench/cache/;
2. bench/membw.c measures the read bandwidth with the same thread count,
   right before every worker process (this machine's bandwidth changes
   from minute to minute); floor = weight bytes one token reads (every
   matrix but the embedding, one embedding row, the vectors) / bandwidth,
   and % of floor is the median over the processes of floor / decode time;
3. correctness before timing: each format's logits against the FP16 file's
   on 16 tokens (KL divergence, printed);
4. every measurement runs in a fresh worker process (load time, first-token
   time and peak RSS are per process); decode = 32 tokens after 8 warm-up
   tokens; medians over --procs processes, min-max shown; prefill = one
   eval_sequence of 128 and of 512 tokens (best of 2 in each process);
5. kernels: "packed" = the library's own AVX-512 VNNI kernels on weights
   re-laid out at load (Model(repack=True), the default where the CPU has
   them), "ggml" = ggml's kernels on the memory-mapped file (repack=False);
   both run in the same rounds, one process after the other.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / "cache"
SHAPES = {"169m": (12, 768), "430m": (24, 1024), "1.5b": (24, 2048), "smoke": (2, 64)}
N_VOCAB = 50277


def ggml_build():
    import libggml
    lib = Path(libggml.__file__).parent
    return "native build (libggml/lib)" if (lib / "lib").exists() else "prebuilt AVX2 wheel (libggml/lib64)"


def model_files(name, types, vocab):
    """{type: path}, generating and converting what is missing."""
    from rwkv_cpp.convert import convert_state_dict
    from rwkv_cpp.quantize import quantize
    CACHE.mkdir(exist_ok=True)
    n_layer, n_embed = SHAPES[name]
    base = CACHE / ("speed-rwkv4-%s" % name)
    f16 = Path("%s-FP16.gguf" % base)
    if not f16.exists():
        print("generating and converting %s (L%d D%d) ..." % (name, n_layer, n_embed), flush=True)
        convert_state_dict(random_state_dict(vocab, n_embed, n_layer), str(f16), "FP16")
    out = {}
    for t in types:
        path = f16 if t == "FP16" else Path("%s-%s.gguf" % (base, t))
        if not path.exists():
            print("quantizing %s ..." % path.name, flush=True)
            quantize(f16, path, t)
        out[t] = path
    return out


def random_state_dict(vocab, n_embed, n_layer):
    """A random RWKV-4 state dict built layer by layer (float32 throughout,
    so a 1.5B model needs ~6 GB, not the float64 generator's 16 GB)."""
    from rwkv_cpp.convert import make_rwkv4_state_dict
    sd = make_rwkv4_state_dict(vocab, n_embed, 1, seed=0)
    for i in range(1, n_layer):
        layer = make_rwkv4_state_dict(1, n_embed, 1, seed=i)
        for key, value in layer.items():
            if key.startswith("blocks.0.") and ".ln0." not in key:
                sd["blocks.%d.%s" % (i, key[len("blocks.0."):])] = value
    return sd


def bytes_per_token(path):
    from rwkv_cpp.convert import read_gguf
    g = read_gguf(str(path))
    total = 0
    for name, info in g.tensors.items():
        if name == "emb.weight":
            total += info.nbytes // info.ne[1]
        else:
            total += info.nbytes
    return total


def bandwidth(threads, mib=1024, runs=10):
    CACHE.mkdir(exist_ok=True)
    binary = CACHE / "membw"
    src = BENCH / "membw.c"
    if not binary.exists() or binary.stat().st_mtime < src.stat().st_mtime:
        subprocess.run([os.environ.get("CC", "cc"), "-O3", "-march=native", "-pthread", "-o", str(binary), str(src)],
                       check=True)
    out = subprocess.run([str(binary), str(threads), str(mib), str(runs)], check=True, capture_output=True,
                         text=True).stdout
    return float(out.split("median_gbs=")[1].split()[0])


def worker(path, threads, decode_tokens, check_ref, prefill=(128, 512), repack=True):
    """Runs in a child process: prints one JSON line."""
    import time
    t0 = time.perf_counter()
    import rwkv_cpp
    m = rwkv_cpp.Model(path, n_threads=threads, repack=repack)
    t_load = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    toks = rng.integers(0, m.n_vocab, 600).astype(np.uint32)
    t1 = time.perf_counter()
    logits, state = m.eval(int(toks[0]))
    t_first = time.perf_counter() - t1
    res = {"load_s": t_load, "first_token_s": t_first}
    if check_ref:
        res["check_logits"] = m.eval_sequence(toks[:16])[0].tolist()
    for tok in toks[1:9]:
        logits, state = m.eval(int(tok), state, out_state=state)
    t2 = time.perf_counter()
    for tok in toks[9:9 + decode_tokens]:
        logits, state = m.eval(int(tok), state, out_state=state, out_logits=logits)
    res["decode_ms"] = 1e3 * (time.perf_counter() - t2) / decode_tokens
    for n in prefill:
        best = 0.0
        for _ in range(2):
            t3 = time.perf_counter()
            m.eval_sequence(toks[:n], logits=False)
            best = max(best, n / (time.perf_counter() - t3))
        res["prefill_%d" % n] = best
    with open("/proc/self/status") as f:
        res["rss_mib"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    print("RESULT " + json.dumps(res), flush=True)


def official_worker(pth, strategy, threads, decode_tokens):
    """The official package (rwkv==0.8.32) on the same shape: decode and
    prefill 128, in this child process; prints one JSON line."""
    import time
    import torch
    torch.set_num_threads(threads)
    from rwkv.model import RWKV
    model = RWKV(model=pth, strategy=strategy, verbose=False)
    toks = [int(t) for t in np.random.default_rng(1).integers(0, N_VOCAB, 200)]
    with torch.no_grad():
        _, state = model.forward(toks[:1], None)
        for tok in toks[1:9]:
            _, state = model.forward([tok], state)
        t0 = time.perf_counter()
        for tok in toks[9:9 + decode_tokens]:
            _, state = model.forward([tok], state)
        decode = 1e3 * (time.perf_counter() - t0) / decode_tokens
        t1 = time.perf_counter()
        model.forward(toks[:128], None)
        prefill = 128 / (time.perf_counter() - t1)
    print("RESULT " + json.dumps({"decode_ms": decode, "prefill_128": prefill}), flush=True)


def run_official(pth, strategy, threads, decode_tokens):
    out = subprocess.run([sys.executable, __file__, "--official-worker", str(pth), "--strategy", strategy,
                          "--threads", str(threads), "--decode-tokens", str(decode_tokens)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.split("RESULT ", 1)[1])


def run_worker(path, threads, decode_tokens, check, prefill=(128, 512), repack=True):
    out = subprocess.run([sys.executable, __file__, "--worker", str(path), "--threads", str(threads),
                          "--decode-tokens", str(decode_tokens), "--repack", "1" if repack else "0",
                          "--prefill"] + [str(n) for n in prefill] + (["--check"] if check else []),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.split("RESULT ", 1)[1])


def kl(ref, other):
    from rwkv_cpp._scoring import kl_rows
    return float(kl_rows(np.asarray(ref)[None], np.asarray(other)[None])[0])


def default_kernels():
    import rwkv_cpp
    return ["packed", "ggml"] if rwkv_cpp.packed_kernels_available() else ["ggml"]


def measure(files, t, kernels, args, membw_args):
    """{kernel: [run results]}: --procs rounds, each running every kernel in
    a fresh process right after a bandwidth measurement."""
    runs = {k: [] for k in kernels}
    for i in range(args.procs):
        for k in kernels:
            bw = bandwidth(args.threads, *membw_args)
            r = run_worker(files[t], args.threads, args.decode_tokens, check=(i == 0), prefill=args.prefill,
                           repack=(k == "packed"))
            r["bandwidth"] = bw
            runs[k].append(r)
    return runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["169m", "430m", "1.5b"])
    ap.add_argument("--types", nargs="+", default=["FP16", "Q8_0", "Q5_1", "Q4_0"])
    ap.add_argument("--kernels", nargs="+", choices=["packed", "ggml"], default=None,
                    help="which matrix kernels to time (default: packed and ggml where the CPU has the packed ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512], help="prefill lengths to time")
    ap.add_argument("--smoke", action="store_true", help="tiny model, one process: checks the bench runs")
    ap.add_argument("--official", action="store_true",
                    help="also time the official package (cpu fp32, cpu bf16) on the 169M shape "
                         "(bench/cache/rwkv4-169m-shape.pth from bench_decode.py)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--repack", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--official-worker", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.threads, args.decode_tokens, args.check, args.prefill, bool(args.repack))
    if args.official_worker:
        return official_worker(args.official_worker, args.strategy, args.threads, args.decode_tokens)
    if args.smoke:
        args.models, args.procs, args.decode_tokens = ["smoke"], 1, 4
    kernels = args.kernels or default_kernels()
    membw_args = (64, 2) if args.smoke else (1024, 5)
    import rwkv_cpp
    print("\n%s, %s, %d threads, ggml: %s, kernels: %s (packed = %s)" % (
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), platform.processor() or platform.machine(),
        args.threads, ggml_build(), " and ".join(kernels), rwkv_cpp.packed_kernels_name()), flush=True)
    print("| model | type | kernels | file MiB | KL vs FP16 | decode ms/token (min-max) | read GB/s | floor ms | "
          "% of floor | prefill 128 tok/s | prefill 512 tok/s | peak RSS MiB | load s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios = []
    for name in args.models:
        files = model_files(name, args.types, 256 if name == "smoke" else N_VOCAB)
        ref = None
        for t in args.types:
            runs = measure(files, t, kernels, args, membw_args)
            nbytes = bytes_per_token(files[t])
            summary = {}
            for k in kernels:
                rs = runs[k]
                if ref is None and t == "FP16":
                    ref = rs[0]["check_logits"]
                dec = [r["decode_ms"] for r in rs]
                bws = [r["bandwidth"] for r in rs]
                bw = statistics.median(bws)
                pct = statistics.median(100 * nbytes / (r["bandwidth"] * 1e9) * 1e3 / r["decode_ms"] for r in rs)
                p128 = statistics.median(r.get("prefill_128", 0) for r in rs)
                summary[k] = (statistics.median(dec), p128)
                p512 = ("%.0f" % statistics.median(r["prefill_512"] for r in rs)) if "prefill_512" in rs[0] else "-"
                print("| %s | %s | %s | %.0f | %s | %.2f (%.2f-%.2f) | %.1f | %.2f | %.0f%% | %.0f | %s | %.0f | %.3f |"
                      % (name, t, k, files[t].stat().st_size / 2**20,
                         "%.1e" % kl(ref, rs[0]["check_logits"]) if ref is not None else "-",
                         statistics.median(dec), min(dec), max(dec), bw, nbytes / (bw * 1e9) * 1e3, pct, p128, p512,
                         max(r["rss_mib"] for r in rs), statistics.median(r["load_s"] for r in rs)), flush=True)
            if "packed" in summary and "ggml" in summary:
                ratios.append((name, t, summary["ggml"][0] / summary["packed"][0],
                               summary["packed"][1] / max(summary["ggml"][1], 1e-9)))
    if ratios:
        print("\n| model | type | decode speed-up, packed vs ggml kernels | prefill 128 speed-up |")
        print("| --- | --- | --- | --- |")
        for name, t, d, p in ratios:
            print("| %s | %s | %.2fx | %.2fx |" % (name, t, d, p))
    if args.official and "169m" in args.models:
        pth = CACHE / "rwkv4-169m-shape.pth"
        if not pth.exists():
            print("(no %s: run bench/bench_decode.py once to make it)" % pth)
            return
        print("\n| model | backend | decode ms/token (min-max) | prefill 128 tok/s |")
        print("| --- | --- | --- | --- |")
        for strategy in ("cpu fp32", "cpu bf16"):
            runs = [run_official(pth, strategy, args.threads, args.decode_tokens) for _ in range(args.procs)]
            dec = [r["decode_ms"] for r in runs]
            print("| 169m | official %s (same run) | %.2f (%.2f-%.2f) | %.0f |" % (
                strategy, statistics.median(dec), min(dec), max(dec),
                statistics.median(r["prefill_128"] for r in runs)), flush=True)


if __name__ == "__main__":
    main()


