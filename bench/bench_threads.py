"""Thread scaling: decode ms/token and prefill tokens/s of random RWKV-4
models at 1..N threads, beside the read bandwidth at each thread count.
For machines with many cores (report only; no target).

    python bench/bench_threads.py [--threads 1 2 4 8 16] [--models 169m 1.5b] [--types FP16 Q5_1]
                                  [--kernels packed ggml] [--prefill 128 512]
"""

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import (  # noqa: E402
    N_VOCAB, bandwidth, bytes_per_token, default_kernels, ggml_build, model_files, run_worker)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--models", nargs="+", default=["169m", "1.5b"])
    ap.add_argument("--types", nargs="+", default=["FP16", "Q5_1"])
    ap.add_argument("--kernels", nargs="+", choices=["packed", "ggml"], default=None,
                    help="matrix kernels (default: packed and ggml where the CPU has the packed ones)")
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512], help="prefill lengths to time")
    args = ap.parse_args()
    import rwkv_cpp
    kernels = args.kernels or default_kernels()
    print("%s, %s, %d CPUs, ggml: %s, packed kernels: %s" % (
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), platform.processor() or platform.machine(),
        os.cpu_count(), ggml_build(), rwkv_cpp.packed_kernels_name()), flush=True)
    bws = {n: bandwidth(n) for n in args.threads}
    cols = " | ".join("prefill %d tok/s" % n for n in args.prefill)
    print("| model | type | kernels | threads | read GB/s | decode ms/token | %% of floor | %s |" % cols)
    print("| --- | --- | --- | --- | --- | --- | --- |%s" % (" --- |" * len(args.prefill)), flush=True)
    for name in args.models:
        files = model_files(name, args.types, N_VOCAB)
        for t in args.types:
            nbytes = bytes_per_token(files[t])
            for k in kernels:
                for n in args.threads:
                    r = run_worker(files[t], n, 32, False, prefill=args.prefill, repack=(k == "packed"))
                    floor = nbytes / (bws[n] * 1e9) * 1e3
                    print("| %s | %s | %s | %d | %.1f | %.2f | %.0f%% | %s |" % (
                        name, t, k, n, bws[n], r["decode_ms"], 100 * floor / r["decode_ms"],
                        " | ".join("%.0f" % r["prefill_%d" % p] for p in args.prefill)), flush=True)


if __name__ == "__main__":
    main()
