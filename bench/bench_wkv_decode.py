"""Decode speed of RWKV-5/6/7 models against the memory-bandwidth floor.

    python -m bench.bench_wkv_decode                  # RWKV-7, 169M shape: L12 D768 V65536, head size 64
    python -m bench.bench_wkv_decode --version 6.0    # any of 5.0 5.1 5.2 6.0 7.0
    python -m bench.bench_wkv_decode --smoke          # tiny model, a few seconds, no timing claims

What it does (the method of bench.bench_speed, for the later versions):
1. generates (once; cached under bench/cache/) a random-weight model of the
   version in the official .pth format (fp32 tensors), converts it to an
   FP32 and an FP16 GGUF, and quantizes the FP32 one to Q5_1 (default
   policy: emb and head stay FP16, the LoRA matrices FP16, vectors FP32);
2. checks correctness before timing over the first CHECK_TOKENS tokens: our
   FP32 logits against the float64 reference (tests/reference_rwkv5plus.py,
   bound 1e-4) and against the official ``cpu fp32`` ones (RWKV-7: class
   RWKV_x070 in its own process; bound OFFICIAL_TOL, see below), and prints
   the FP16 / Q5_1 deviations from our FP32 (informative).  At the first
   token (zero state) a head's WKV output is v times r . k; where that dot
   product is small, ln_x (a GroupNorm per head) magnifies float32 rounding:
   on this RWKV-7 169M shape the official float32 logits are 1.5e-4 from the
   float64 reference at the first token (ours 8e-6), hence the looser bound;
3. times decode (one token per call, state carried) in separate worker
   processes (bench/worker.py), interleaved round-robin over the files;
   reports the median ms/token over all runs;
4. prints the floor: the bytes one token reads (every tensor as stored,
   except one row of the embedding) divided by the read bandwidth measured
   by bench/membw.c with the same thread count (median over rounds of each
   round's best).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import rwkv_cpp
from rwkv_cpp.convert import convert_file
from rwkv_cpp.convert.random_model import make_state_dict
from rwkv_cpp.quantize import quantize
from tests.reference_rwkv5plus import WkvReference, run as reference_run

from .harness import (CACHE, REPO, bench_tokens, bytes_per_token, floor_ms, measure_bandwidth, print_table,
                      run_worker)

V7_WORKER = REPO / "tests" / "official_v7_worker.py"
CHECK_TOKENS = 4
FP32_TOL = 1e-4      # ours FP32 vs the float64 reference
OFFICIAL_TOL = 1e-3  # ours FP32 vs the official float32 (see the docstring)
FILE_TYPES = ("FP16", "Q5_1")


@dataclass(frozen=True)
class Shape:
    name: str
    n_vocab: int
    n_embed: int
    n_layer: int
    head_size: int
    tokens: int
    runs_per_process: int
    rounds: int
    membw_mib: int


FULL = Shape("169m-shape", 65536, 768, 12, 64, tokens=64, runs_per_process=2, rounds=4, membw_mib=1024)
SMOKE = Shape("smoke", 256, 64, 2, 16, tokens=8, runs_per_process=1, rounds=1, membw_mib=64)


def paths(version: str, shape: Shape) -> dict:
    base = CACHE / f"rwkv{version.replace('.', 'v')}-{shape.name}"
    return {"pth": base.with_suffix(".pth"), "FP32": Path(f"{base}-FP32.gguf"),
            "FP16": Path(f"{base}-FP16.gguf"), "Q5_1": Path(f"{base}-Q5_1.gguf")}


def build(version: str, shape: Shape) -> dict:
    """The cached .pth and its conversions (made once)."""
    CACHE.mkdir(exist_ok=True)
    p = paths(version, shape)
    if not p["pth"].exists():
        print(f"generating {p['pth']} ...", flush=True)
        sd = make_state_dict(version, shape.n_vocab, shape.n_embed, shape.n_layer, shape.head_size, seed=0)
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, str(p["pth"]))
    for file_type in ("FP32", "FP16"):
        if not p[file_type].exists():
            print(f"converting to {p[file_type]} ...", flush=True)
            convert_file(str(p["pth"]), str(p[file_type]), out_type=file_type)
    if not p["Q5_1"].exists():
        quantize(p["FP32"], p["Q5_1"], "Q5_1")
    return p


# -- correctness ---------------------------------------------------------------


def official_logits(version: str, pth: Path, shape: Shape, workdir: Path) -> np.ndarray:
    """The official cpu fp32 logits of the check tokens, computed in
    another process (RWKV-7: tests/official_v7_worker.py)."""
    out = workdir / "official.npy"
    if version == "7.0":
        np.save(workdir / "tokens.npy", bench_tokens(shape.n_vocab, CHECK_TOKENS))
        jobs = workdir / "jobs.json"
        jobs.write_text(json.dumps([{"model": str(pth), "tokens": str(workdir / "tokens.npy"),
                                     "out": str(workdir / "official.npz")}]))
        subprocess.run([sys.executable, str(V7_WORKER), str(jobs)], check=True, capture_output=True)
        return np.load(workdir / "official.npz")["logits"]
    run_worker("official", pth, 2, decode_tokens=0, prefill=(), check=CHECK_TOKENS, check_out=out,
               n_vocab=shape.n_vocab, no_jit=True)
    return np.load(out)


def our_logits(path: Path, tokens) -> np.ndarray:
    with rwkv_cpp.Model(str(path), n_threads=2) as model:
        state, out = None, []
        for token in tokens:
            logits, state = model.eval(int(token), state)
            out.append(np.array(logits, copy=True))
    return np.stack(out)


def reference_logits(version: str, pth: Path, tokens) -> np.ndarray:
    """The float64 reference of tests/reference_rwkv5plus.py."""
    weights = {k: v.float().numpy() for k, v in torch.load(str(pth), map_location="cpu").items()}
    return reference_run(WkvReference(weights, version), [int(t) for t in tokens])[0]


def check(version: str, p: dict, shape: Shape, workdir: Path) -> list:
    tokens = bench_tokens(shape.n_vocab, CHECK_TOKENS)
    ours = our_logits(p["FP32"], tokens)
    lines = []
    for label, expected, tol in (("float64 reference", reference_logits(version, p["pth"], tokens), FP32_TOL),
                                 ("official cpu fp32", official_logits(version, p["pth"], shape, workdir),
                                  OFFICIAL_TOL)):
        err = float(np.abs(ours - expected).max())
        if err > tol:
            raise SystemExit(f"correctness check failed: ours FP32 vs {label} max-abs {err:.3g} > {tol:g}")
        lines.append(f"  ours FP32 vs {label}, {CHECK_TOKENS} tokens: max-abs {err:.3g} ok (<= {tol:g})")
    for file_type in FILE_TYPES:
        dev = float(np.abs(our_logits(p[file_type], tokens) - ours).max())
        lines.append(f"  ours {file_type} vs ours FP32: max-abs {dev:.3g} (informative)")
    return lines


# -- timing --------------------------------------------------------------------


def time_files(p: dict, shape: Shape, threads: int) -> tuple:
    """{file type: ms/token of every run}, and the bandwidth of each round
    (best of 5 reads)."""
    results = {t: [] for t in FILE_TYPES}
    bandwidth = []
    for _ in range(shape.rounds):
        bandwidth.append(measure_bandwidth(threads, shape.membw_mib, 5).best_gbs)
        for file_type in FILE_TYPES:
            results[file_type] += run_worker("ours", p[file_type], threads, decode_tokens=shape.tokens,
                                             runs=shape.runs_per_process, prefill=())["decode_ms"]
    return results, bandwidth


def main(args) -> None:
    shape = SMOKE if args.smoke else FULL
    p = build(args.version, shape)
    print(f"RWKV-{args.version} {shape.name}: L{shape.n_layer} D{shape.n_embed} V{shape.n_vocab} "
          f"head size {shape.head_size}, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory() as tmp:
        print("\n".join(check(args.version, p, shape, Path(tmp))))
    results, bandwidth = time_files(p, shape, args.threads)
    gbs = statistics.median(bandwidth)
    print(f"bandwidth (best of 5 reads of {shape.membw_mib} MiB, per round): "
          + ", ".join(f"{b:.1f}" for b in bandwidth) + f" GB/s; floor uses the median {gbs:.1f}")
    rows = []
    for file_type, times in results.items():
        nbytes = bytes_per_token(p[file_type])
        floor, median = floor_ms(nbytes, gbs), statistics.median(times)
        rows.append([file_type, f"{median:.2f}", f"{min(times):.2f}", len(times), f"{nbytes / 1e6:.1f}",
                     f"{floor:.2f}", f"{100 * floor / median:.0f}%"])
    print_table(["file", "ms/token (median)", "min", "runs", "MB read/token", "floor ms", "% of floor"], rows)
    for file_type, times in results.items():
        print(f"  {file_type}: " + " ".join(f"{t:.1f}" for t in times))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.bench_wkv_decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default="7.0", choices=("5.0", "5.1", "5.2", "6.0", "7.0"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny model, quick, no timing claims")
    return ap.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
