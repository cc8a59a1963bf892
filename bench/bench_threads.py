"""Thread scaling: decode ms/token and prefill tokens/s of random RWKV-4
models at 1..N threads, beside the read bandwidth at each thread count.
For machines with many cores (report only; no target).

    python -m bench.bench_threads [--threads 1 2 4 8 16] [--models 169m 1.5b] [--types FP16 Q5_1]
                                  [--kernels packed ggml] [--prefill 128 512]

Models, bandwidth (bench/membw.c, median of 10 reads of 1 GiB, once per
thread count), floor and worker processes as in bench.bench_speed; one
process per row.
"""

import argparse

import rwkv_cpp

from .harness import (bytes_per_token, default_kernels, floor_ms, machine_line, measure_bandwidth,
                      print_table, run_worker, rwkv4_files)


def rows(args, bws):
    for name in args.models:
        files = rwkv4_files(name, args.types)
        for t in args.types:
            nbytes = bytes_per_token(files[t])
            for k in args.kernels:
                for n in args.threads:
                    r = run_worker("ours", files[t], n, prefill=args.prefill, repack=(k == "packed"))
                    decode = r["decode_ms"][0]
                    yield ([name, t, k, n, "%.1f" % bws[n], "%.2f" % decode,
                            "%.0f%%" % (100 * floor_ms(nbytes, bws[n]) / decode)]
                           + ["%.0f" % r["prefill_%d" % p] for p in args.prefill])


def main():
    ap = argparse.ArgumentParser(prog="python -m bench.bench_threads", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--models", nargs="+", default=["169m", "1.5b"])
    ap.add_argument("--types", nargs="+", default=["FP16", "Q5_1"])
    ap.add_argument("--kernels", nargs="+", choices=["packed", "ggml"], default=None,
                    help="matrix kernels (default: packed and ggml where the CPU has the packed ones)")
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512], help="prefill lengths to time")
    args = ap.parse_args()
    args.kernels = args.kernels or default_kernels()
    print("%s, packed kernels: %s" % (machine_line(max(args.threads)), rwkv_cpp.packed_kernels_name()),
          flush=True)
    bws = {n: measure_bandwidth(n).median_gbs for n in args.threads}
    print_table(["model", "type", "kernels", "threads", "read GB/s", "decode ms/token", "% of floor"]
                + ["prefill %d tok/s" % n for n in args.prefill], rows(args, bws))


if __name__ == "__main__":
    main()
