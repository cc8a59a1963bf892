"""Thread scaling: decode ms/token and prefill tokens/s of random RWKV-4
models at 1..N threads, beside the read bandwidth at each thread count.
For machines with many cores (report only; no target).

    python bench/bench_threads.py [--threads 1 2 4 8 16] [--models 169m 1.5b] [--types FP16 Q5_1]
"""

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import bandwidth, bytes_per_token, ggml_build, model_files, run_worker, N_VOCAB  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--models", nargs="+", default=["169m", "1.5b"])
    ap.add_argument("--types", nargs="+", default=["FP16", "Q5_1"])
    args = ap.parse_args()
    print("%s, %s, %d CPUs, ggml: %s" % (datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
                                         platform.processor() or platform.machine(), os.cpu_count(), ggml_build()),
          flush=True)
    bws = {n: bandwidth(n) for n in args.threads}
    print("| model | type | threads | read GB/s | decode ms/token | % of floor | prefill 128 tok/s | prefill 512 tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for name in args.models:
        files = model_files(name, args.types, N_VOCAB)
        for t in args.types:
            nbytes = bytes_per_token(files[t])
            for n in args.threads:
                r = run_worker(files[t], n, 32, False)
                floor = nbytes / (bws[n] * 1e9) * 1e3
                print("| %s | %s | %d | %.1f | %.2f | %.0f%% | %.0f | %.0f |" % (
                    name, t, n, bws[n], r["decode_ms"], 100 * floor / r["decode_ms"], r["prefill_128"],
                    r["prefill_512"]), flush=True)


if __name__ == "__main__":
    main()
