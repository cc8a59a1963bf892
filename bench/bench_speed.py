"""Speed of rwkv_cpp on random-weight RWKV-4 models of the 169M, 430M and
1.5B shapes: decode ms/token against the memory-bandwidth floor, prefill
tokens/s at 128 and 512 tokens, peak RSS and load time, per format; with
--lib, several builds of the library side by side; with --official, the
official package on the same weights.

    python -m bench.bench_speed [--models 169m 430m 1.5b] [--types FP16 Q8_0 Q5_1 Q4_0]
        [--kernels packed ggml] [--packed-isa avx2] [--threads 2] [--procs 3] [--runs-per-process 1]
        [--lib old=OLD/librwkv_cpp.so --lib new=NEW/librwkv_cpp.so] [--official] [--smoke]

Method:
1. models are generated once (official key names, random weights, numpy;
   no torch), converted to FP32/FP16 GGUF and quantized from FP16; cached
   in bench/cache/ (bench.harness.rwkv4_files);
2. bench/membw.c measures the read bandwidth with the same thread count,
   right before every worker process (this machine's bandwidth changes
   from minute to minute); floor = weight bytes one token reads (every
   matrix but the embedding, one embedding row, the vectors) / bandwidth,
   and % of floor is the median over the processes of floor / decode time;
3. correctness before timing: each format's logits against the FP16 file's
   on 16 tokens (KL divergence, printed); with --official, ours FP32/FP16
   against the official cpu fp32 (max-abs, bounded: the run fails beyond);
4. every measurement runs in a fresh worker process (bench/worker.py: load
   time, first-token time and peak RSS are per process); decode = 32 tokens
   after 8 warm-up tokens (--runs-per-process repeats it in the process);
   medians over --procs processes, min-max shown; prefill = one
   eval_sequence of 128 and of 512 tokens (best of 2 in each process);
5. kernels: "packed" = the library's own AVX-512 VNNI kernels on weights
   re-laid out at load (Model(repack=True), the default where the CPU has
   them), "ggml" = ggml's kernels on the memory-mapped file (repack=False);
6. every process of one round runs right after the other: all types, all
   kernels, all --lib builds, then the official package (--official: cpu
   fp32 and cpu bf16 on a .pth of the same weights), --procs rounds, so
   that the machine's noise hits them alike.

--lib NAME=PATH (repeatable) compares builds of the C library: PATH is a
librwkv_cpp.so (its workers import a copy of the installed Python package
placed beside a copy of that file, bench.harness.library_packages, and check
that they mapped it) or the folder of a whole installed rwkv_cpp package.
A table of each build's decode and prefill against the first build's
follows the main one.
"""

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

import rwkv_cpp

from . import harness
from .harness import (SHAPES, bytes_per_token, default_kernels, floor_ms, kl, library_packages,
                      machine_line, measure_bandwidth, median_range, print_table, run_worker,
                      rwkv4_files, rwkv4_pth)

CHECK_TOKENS = 16
OFFICIAL_STRATEGIES = ("cpu fp32", "cpu bf16")
#: our file type whose bytes per token the official strategy reads.
OFFICIAL_BYTES_LIKE = {"cpu fp32": "FP32", "cpu bf16": "FP16"}
#: max-abs logits bound of ours against the official cpu fp32 (the others are informative).
OFFICIAL_TOL = {"FP32": 1e-4, "FP16": 2e-2}


@dataclass(frozen=True)
class Variant:
    """One column of processes in a round: a file type, kernels and build
    of ours, or a strategy of the official package (kernel "official")."""

    type: str
    kernel: str
    build: str = ""
    package: Optional[str] = None

    @property
    def official(self) -> bool:
        return self.kernel == "official"


def variants(args, builds: Dict[str, Optional[str]]) -> List[Variant]:
    out = [Variant(t, k, name, package) for t in args.types for k in args.kernels
           for name, package in builds.items()]
    if args.official:
        out += [Variant(s, "official") for s in OFFICIAL_STRATEGIES]
    return out


def measure(name: str, files: Dict[str, Path], args, vs: List[Variant], tmp: Path) -> Dict[Variant, list]:
    """{variant: [worker results]}: --procs rounds, each running every
    variant in a fresh process right after a bandwidth measurement; the
    first round also saves the check logits (result key "check")."""
    runs = {v: [] for v in vs}
    pth = rwkv4_pth(name) if args.official else None
    for i in range(args.procs):
        for v in vs:
            bw = measure_bandwidth(args.threads, *args.membw)
            check = tmp / ("%s-%s-%s-%s.npy" % (name, v.type, v.kernel, v.build))
            check_tokens = CHECK_TOKENS if i == 0 and v.type != "cpu bf16" else 0
            common = dict(decode_tokens=args.decode_tokens, runs=args.runs_per_process, prefill=args.prefill,
                          check=check_tokens, check_out=check)
            if v.official:
                r = run_worker("official", pth, args.threads, strategy=v.type, n_vocab=SHAPES[name][2],
                               **common)
            else:
                r = run_worker("ours", files[v.type], args.threads, repack=(v.kernel == "packed"),
                               packed_isa=args.packed_isa, package=v.package, **common)
            r["bandwidth"] = bw.median_gbs
            r["decode"] = statistics.median(r["decode_ms"])
            if check_tokens:
                r["check"] = np.load(check)
            runs[v].append(r)
    return runs


def prefill_cells(rs: list, lengths) -> List[str]:
    """Median prefill tokens/s at each length, '-' where not measured."""
    return ["%.0f" % statistics.median(r["prefill_%d" % n] for r in rs) if "prefill_%d" % n in rs[0] else "-"
            for n in lengths]


def main_rows(name, files, runs, vs, nbytes, args):
    """The rows of the main table: ours, one per type, kernels and build."""
    ref = next((rs[0]["check"][-1] for v, rs in runs.items() if v.type == "FP16" and not v.official), None)
    for v in (v for v in vs if not v.official):
        rs = runs[v]
        bw = statistics.median(r["bandwidth"] for r in rs)
        pct = statistics.median(100 * floor_ms(nbytes[v.type], r["bandwidth"]) / r["decode"] for r in rs)
        yield ([name, v.type, v.kernel] + ([v.build] if args.lib else [])
               + ["%.0f" % (files[v.type].stat().st_size / 2**20),
                  "%.1e" % kl(ref, rs[0]["check"][-1]) if ref is not None else "-",
                  median_range([d for r in rs for d in r["decode_ms"]]), "%.1f" % bw,
                  "%.2f" % floor_ms(nbytes[v.type], bw), "%.0f%%" % pct]
               + prefill_cells(rs, args.prefill)
               + ["%.0f" % max(r["rss_mib"] for r in rs), "%.3f" % statistics.median(r["load_s"] for r in rs)])


def kernel_rows(name, runs, args):
    """packed against ggml kernels: decode and first prefill speed-ups."""
    med = {v: (statistics.median(r["decode"] for r in rs),
               statistics.median(r.get("prefill_%d" % args.prefill[0], 0) for r in rs) if args.prefill else 0)
           for v, rs in runs.items() if not v.official}
    for v, (dec, pre) in med.items():
        other = Variant(v.type, "ggml", v.build, v.package)
        if v.kernel == "packed" and other in med:
            yield ([name, v.type] + ([v.build] if args.lib else [])
                   + ["%.2fx" % (med[other][0] / dec), "%.2fx" % (pre / max(med[other][1], 1e-9))])


def build_rows(name, runs, args):
    """Each --lib build against the first one: decode and prefill, medians."""
    first = next(iter(args.builds))
    for v, rs in runs.items():
        if v.official:
            continue
        base = runs[Variant(v.type, v.kernel, first, args.builds[first])]
        dec, base_dec = (statistics.median(r["decode"] for r in x) for x in (rs, base))
        cells = [median_range([d for r in rs for d in r["decode_ms"]]), "%.3f" % (dec / base_dec)]
        for n in args.prefill:
            tps, base_tps = (statistics.median(r["prefill_%d" % n] for r in x) for x in (rs, base))
            cells += ["%.0f" % tps, "%.3f" % (tps / base_tps)]
        yield [name, v.type, v.kernel, v.build] + cells


def check_official(runs, vs) -> bool:
    """Ours against the official cpu fp32, max-abs over the check tokens
    (bounded for FP32 and FP16: OFFICIAL_TOL); prints a line per variant,
    returns whether all are within their bound."""
    ref = runs[Variant("cpu fp32", "official")][0]["check"].astype(np.float64)
    ok = True
    for v in (v for v in vs if not v.official and v.type in OFFICIAL_TOL):
        err = float(np.abs(runs[v][0]["check"] - ref).max())
        tol = OFFICIAL_TOL[v.type]
        print("ours %s %s%s vs official cpu fp32, %d tokens: max-abs %.3g %s" % (
            v.type, v.kernel, " " + v.build if v.build else "", CHECK_TOKENS, err,
            "ok" if err <= tol else "FAIL > %g" % tol))
        ok &= err <= tol
    return ok


def official_rows(name, runs, args, vs):
    """The official package's decode and prefill, beside the floor of the
    bytes it reads (those of our FP32 file for fp32, FP16 for bf16)."""
    nbytes = {t: bytes_per_token(p) for t, p in rwkv4_files(name, ["FP32", "FP16"]).items()}
    for v in (v for v in vs if v.official):
        rs = runs[v]
        bw = statistics.median(r["bandwidth"] for r in rs)
        floor = floor_ms(nbytes[OFFICIAL_BYTES_LIKE[v.type]], bw)
        yield ([name, "official " + v.type, median_range([d for r in rs for d in r["decode_ms"]]),
                "%.1f" % bw, "%.2f" % floor, "%.0f%%" % statistics.median(100 * floor / r["decode"] for r in rs)]
               + prefill_cells(rs, args.prefill))


def bench_model(name: str, args, tmp: Path) -> None:
    """Every table of one model shape."""
    vs = variants(args, args.builds)
    files = rwkv4_files(name, args.types)
    runs = measure(name, files, args, vs, tmp)
    nbytes = {t: bytes_per_token(p) for t, p in files.items()}
    official_ok = check_official(runs, vs) if args.official else True
    build = ["build"] if args.lib else []
    print_table(["model", "type", "kernels"] + build + [
        "file MiB", "KL vs FP16", "decode ms/token (min-max)", "read GB/s", "floor ms", "% of floor"]
        + ["prefill %d tok/s" % n for n in args.prefill] + ["peak RSS MiB", "load s"],
        main_rows(name, files, runs, vs, nbytes, args))
    ratios = list(kernel_rows(name, runs, args))
    if ratios:
        print()
        first = ("prefill %d" % args.prefill[0]) if args.prefill else "prefill"
        print_table(["model", "type"] + build + ["decode speed-up, packed vs ggml kernels",
                                                 first + " speed-up"], ratios)
    if len(args.builds) > 1:
        print()
        first = next(iter(args.builds))
        cols = []
        for n in args.prefill:
            cols += ["prefill %d tok/s" % n, "vs %s" % first]
        print_table(["model", "type", "kernels", "build", "decode ms/token (min-max)",
                     "time vs %s" % first] + cols, build_rows(name, runs, args))
    if args.official:
        print()
        print_table(["model", "backend", "decode ms/token (min-max)", "read GB/s", "floor ms", "% of floor"]
                    + ["prefill %d tok/s" % n for n in args.prefill], official_rows(name, runs, args, vs))
        if not official_ok:
            raise SystemExit("correctness check against the official package failed")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.bench_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["169m", "430m", "1.5b"])
    ap.add_argument("--types", nargs="+", default=["FP16", "Q8_0", "Q5_1", "Q4_0"],
                    help="file types (FP32, FP16 or a quantized type)")
    ap.add_argument("--packed-isa", default="auto", choices=["auto", "avx512", "avx2"],
                    help="cap the packed kernels at this instruction set (Model(packed_isa=...)), e.g. avx2 "
                         "to measure what a CPU without AVX-512 gains")
    ap.add_argument("--kernels", nargs="+", choices=["packed", "ggml"], default=None,
                    help="which matrix kernels to time (default: packed and ggml where the CPU has the packed ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--procs", type=int, default=3, help="rounds: worker processes per variant")
    ap.add_argument("--runs-per-process", type=int, default=1, help="timed decodes in each process")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512], help="prefill lengths to time")
    ap.add_argument("--lib", action="append", default=[], metavar="NAME=PATH",
                    help="a build of the library to time (repeat to compare builds in the same rounds): "
                         "a librwkv_cpp.so, or the folder of an installed rwkv_cpp package")
    ap.add_argument("--official", action="store_true",
                    help="also time the official package (cpu fp32, cpu bf16; needs torch and rwkv) on a .pth "
                         "of the same weights, and check ours against it")
    ap.add_argument("--smoke", action="store_true", help="tiny model, one process: checks the bench runs")
    ap.add_argument("--cache-dir", default=None,
                    help="folder for the generated models and the bandwidth probe (default: bench/cache)")
    args = ap.parse_args(argv)
    if args.cache_dir:
        harness.CACHE = Path(args.cache_dir)
    if args.smoke:
        args.models, args.procs, args.decode_tokens = ["smoke"], 1, 4
    args.kernels = args.kernels or default_kernels()
    args.membw = (64, 2) if args.smoke else (1024, 5)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    packed = rwkv_cpp.packed_kernels_name() if args.packed_isa == "auto" else "capped at " + args.packed_isa
    print("\n%s, kernels: %s (packed = %s)" % (machine_line(args.threads), " and ".join(args.kernels), packed),
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        args.builds = library_packages(args.lib, Path(tmp))
        for name in args.models:
            bench_model(name, args, Path(tmp))


if __name__ == "__main__":
    main()
