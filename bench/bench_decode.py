"""Decode speed of rwkv_cpp against the official implementation, and against
the memory-bandwidth floor.

    python bench/bench_decode.py            # 169M-shape RWKV-4 (L12 D768 V50277)
    python bench/bench_decode.py --smoke    # tiny model, a few seconds, no timing claims

What it does:
1. generates (once; cached under bench/cache/) a random-weight model of the
   RWKV-4 169M shape in the official .pth format, and converts it to FP32 and
   FP16 GGUF.  The .pth holds fp32 tensors: decode reads the same bytes
   either way, and with fp32 the correctness check below needs no care about
   the official bf16 rounding of ln0(emb) (see tests/conftest.py);
2. compiles bench/membw.c and, in every round, measures the read bandwidth
   with the same thread count (best of several reads of 1 GiB);
3. checks correctness before timing: our logits against the official
   ``cpu fp32`` ones over the first CHECK_TOKENS tokens;
4. times decode (one token per call, state carried) in separate worker
   processes, interleaved round-robin over the backends so that machine noise
   hits them alike; reports the median ms/token over all runs;
5. prints a table with the bandwidth floor: the bytes of weights one token
   reads (every matrix, one row of the embedding, the vectors) divided by the
   bandwidth (median over rounds of each round's best), and the percentage of
   that floor reached.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / "cache"

CHECK_TOKENS = 8
CHECK_TOL = {"ours FP32": 1e-4, "ours FP16": 2e-2, "official cpu bf16": None}
OFFICIAL_REFERENCE = "official cpu fp32"


@dataclass(frozen=True)
class BenchConfig:
    name: str
    n_vocab: int
    n_embed: int
    n_layer: int
    tokens: int  # timed tokens per run
    warmup: int  # untimed tokens before each process's runs
    runs_per_process: int
    rounds: int  # worker processes per backend
    membw_mib: int
    membw_runs: int


FULL = BenchConfig("rwkv4-169m-shape", 50277, 768, 12, tokens=64, warmup=8,
                   runs_per_process=2, rounds=5, membw_mib=1024, membw_runs=10)
SMOKE = BenchConfig("rwkv4-smoke", 256, 64, 2, tokens=8, warmup=2,
                    runs_per_process=1, rounds=1, membw_mib=64, membw_runs=2)


@dataclass(frozen=True)
class Backend:
    label: str
    kind: str  # "ours" or "official"
    variant: str  # ours: GGUF file type; official: strategy
    matrix_bytes: int  # bytes per matrix element as it is read during decode


BACKENDS = [
    Backend("ours FP32", "ours", "FP32", 4),
    Backend("ours FP16", "ours", "FP16", 2),
    Backend(OFFICIAL_REFERENCE, "official", "cpu fp32", 4),
    Backend("official cpu bf16", "official", "cpu bf16", 2),
]


# ---------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------


def model_paths(config: BenchConfig) -> dict[str, Path]:
    base = CACHE_DIR / config.name
    return {"pth": base.with_suffix(".pth"),
            "FP32": Path(f"{base}-FP32.gguf"), "FP16": Path(f"{base}-FP16.gguf")}


def converter_mtime() -> float:
    import rwkv_cpp.convert

    package = Path(rwkv_cpp.convert.__file__).parent
    return max(p.stat().st_mtime for p in package.glob("*.py"))


def build_models(config: BenchConfig) -> dict[str, Path]:
    """The .pth (generated once) and its GGUF conversions (redone when the
    converter's sources are newer than the file)."""
    import torch
    from rwkv_cpp.convert import convert_file
    from rwkv_cpp.convert.random_model import make_rwkv4_state_dict

    CACHE_DIR.mkdir(exist_ok=True)
    paths = model_paths(config)
    if not paths["pth"].exists():
        print(f"generating {paths['pth']} ...", flush=True)
        weights = make_rwkv4_state_dict(config.n_vocab, config.n_embed, config.n_layer, seed=0)
        tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
        torch.save(tensors, str(paths["pth"]))
    for file_type in ("FP32", "FP16"):
        path = paths[file_type]
        if not path.exists() or path.stat().st_mtime < converter_mtime():
            print(f"converting to {path} ...", flush=True)
            convert_file(str(paths["pth"]), str(path), out_type=file_type)
    return paths


def bytes_per_token(pth: Path, matrix_bytes: int) -> int:
    """Weight bytes one decode step reads: every 2-D matrix except the
    embedding at ``matrix_bytes`` per element, one embedding row and every
    vector at 4 bytes (they stay FP32 in all backends here)."""
    import torch

    weights = torch.load(str(pth), map_location="cpu", mmap=True)
    total = 0
    for key, tensor in weights.items():
        if key == "emb.weight":
            total += tensor.shape[1] * 4
        elif tensor.dim() == 2:
            total += tensor.numel() * matrix_bytes
        else:
            total += tensor.numel() * 4
    return total


# ---------------------------------------------------------------------------
# Memory bandwidth
# ---------------------------------------------------------------------------


def measure_bandwidth(threads: int, mib: int, runs: int) -> dict[str, float]:
    CACHE_DIR.mkdir(exist_ok=True)
    binary = CACHE_DIR / "membw"
    source = BENCH_DIR / "membw.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O3", "-march=native", "-pthread", "-o", str(binary), str(source)],
                       check=True)
    out = subprocess.run([str(binary), str(threads), str(mib), str(runs)],
                         check=True, capture_output=True, text=True).stdout
    match = re.search(r"RESULT threads=(\d+) bytes=(\d+) best_gbs=([\d.]+) median_gbs=([\d.]+)", out)
    if not match:
        raise RuntimeError(f"unexpected membw output: {out!r}")
    return {"best_gbs": float(match.group(3)), "median_gbs": float(match.group(4))}


# ---------------------------------------------------------------------------
# Worker processes (one backend, one model load, several timed runs)
# ---------------------------------------------------------------------------


def bench_tokens(n_vocab: int, count: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(1234).integers(0, n_vocab, size=count)]


def load_decoder(kind: str, variant: str, path: str, threads: int):
    """Returns step(token, state) -> (logits as np.float32, state)."""
    if kind == "ours":
        import rwkv_cpp

        model = rwkv_cpp.Model(path, n_threads=threads)
        return lambda token, state: model.eval(token, state)
    import torch

    torch.set_num_threads(threads)
    from rwkv.model import RWKV  # the package's defaults (TorchScript on)

    model = RWKV(model=path, strategy=variant, verbose=False)

    def step(token, state):
        with torch.no_grad():
            logits, state = model.forward([token], state)
        return logits.float().numpy(), state

    return step


def worker(args) -> None:
    step = load_decoder(args.kind, args.variant, args.path, args.threads)
    tokens = bench_tokens(args.n_vocab, args.warmup + args.tokens)
    check_logits, state = [], None
    for token in tokens[:args.warmup]:  # warm-up, and the correctness sample
        logits, state = step(token, state)
        check_logits.append(np.array(logits, dtype=np.float32))
    ms_per_token = []
    for _ in range(args.runs):
        run_state = state
        start = time.perf_counter()
        for token in tokens[args.warmup:]:
            _, run_state = step(token, run_state)
        ms_per_token.append((time.perf_counter() - start) * 1e3 / args.tokens)
    np.save(args.logits_out, np.stack(check_logits))
    print(json.dumps({"ms_per_token": ms_per_token}))


def run_worker(backend: Backend, path: Path, config: BenchConfig, threads: int,
               logits_out: Path) -> list[float]:
    command = [sys.executable, __file__, "--worker", "--kind", backend.kind,
               "--variant", backend.variant, "--path", str(path), "--threads", str(threads),
               "--n-vocab", str(config.n_vocab), "--tokens", str(config.tokens),
               "--warmup", str(max(config.warmup, CHECK_TOKENS)),
               "--runs", str(config.runs_per_process), "--logits-out", str(logits_out)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms_per_token"]


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def check_correctness(check: dict[str, np.ndarray]) -> list[str]:
    """Max-abs logits error of each backend against official cpu fp32."""
    lines, failed = [], False
    reference = check.get(OFFICIAL_REFERENCE)
    for label, logits in check.items():
        if label == OFFICIAL_REFERENCE or reference is None:
            continue
        err = float(np.max(np.abs(logits[:CHECK_TOKENS].astype(np.float64)
                                  - reference[:CHECK_TOKENS])))
        tol = CHECK_TOL.get(label)
        verdict = "(informative)" if tol is None else ("ok" if err <= tol else f"FAIL > {tol:g}")
        failed |= tol is not None and err > tol
        lines.append(f"  {label:<20} max-abs logits vs {OFFICIAL_REFERENCE}, "
                     f"{CHECK_TOKENS} tokens: {err:.3g} {verdict}")
    if failed:
        raise SystemExit("correctness check failed:\n" + "\n".join(lines))
    return lines


def format_table(results, bandwidth, floor_bytes) -> list[str]:
    baseline = statistics.median(results[OFFICIAL_REFERENCE]) if OFFICIAL_REFERENCE in results else None
    head = (f"| backend | ms/token (median) | min | runs | MB read/token | floor ms "
            f"| % of floor | speed-up vs {OFFICIAL_REFERENCE} |")
    lines = [head, "|" + " --- |" * 8]
    for label, times in results.items():
        median = statistics.median(times)
        floor_ms = floor_bytes[label] / (bandwidth["best_gbs"] * 1e9) * 1e3
        speedup = f"{baseline / median:.2f}x" if baseline else "-"
        lines.append(f"| {label} | {median:.2f} | {min(times):.2f} | {len(times)} "
                     f"| {floor_bytes[label] / 1e6:.1f} | {floor_ms:.2f} "
                     f"| {100 * floor_ms / median:.0f}% | {speedup} |")
    return lines


def machine_description(threads: int) -> str:
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {threads} threads; {platform.platform()}"


def official_available() -> bool:
    try:
        import rwkv  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def load_average() -> str:
    return " ".join("%.2f" % x for x in os.getloadavg())


def main(args) -> None:
    config = SMOKE if args.smoke else FULL
    load_start = load_average()
    paths = build_models(config)
    backends = [b for b in BACKENDS if b.kind == "ours" or official_available()]
    results: dict[str, list[float]] = {b.label: [] for b in backends}
    check: dict[str, np.ndarray] = {}
    bandwidths = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(config.rounds):
            # bandwidth in every round too: the machine's load varies
            bandwidths.append(measure_bandwidth(args.threads, config.membw_mib, config.membw_runs))
            for backend in backends:
                path = paths[backend.variant] if backend.kind == "ours" else paths["pth"]
                logits_out = Path(tmp) / f"{round_index}-{backend.kind}-{backend.variant}.npy"
                results[backend.label] += run_worker(backend, path, config, args.threads, logits_out)
                check.setdefault(backend.label, np.load(logits_out))
            print(f"round {round_index + 1}/{config.rounds} done", flush=True)

    floor_bytes = {b.label: bytes_per_token(paths["pth"], b.matrix_bytes) for b in backends}
    # per round, the best of membw_runs; across rounds, the median
    bandwidth = {"best_gbs": statistics.median(b["best_gbs"] for b in bandwidths),
                 "median_gbs": statistics.median(b["median_gbs"] for b in bandwidths)}
    print()
    if args.smoke:
        print("SMOKE RUN: tiny model, timings are meaningless.")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine_description(args.threads)}")
    print(f"model: {config.name} (L{config.n_layer} D{config.n_embed} V{config.n_vocab}), "
          f"{config.tokens} tokens per run after {max(config.warmup, CHECK_TOKENS)} warm-up")
    per_round = ", ".join("%.1f" % b["best_gbs"] for b in bandwidths)
    print(f"memory read bandwidth ({args.threads} threads, {config.membw_mib} MiB): "
          f"best of {config.membw_runs} reads, median over rounds {bandwidth['best_gbs']:.1f} GB/s "
          f"(rounds: {per_round}); median of all reads {bandwidth['median_gbs']:.1f} GB/s. "
          f"The floor uses {bandwidth['best_gbs']:.1f} GB/s.")
    print("correctness:")
    print("\n".join(check_correctness(check)))
    print()
    print("\n".join(format_table(results, bandwidth, floor_bytes)))
    print()
    print("all runs, ms/token:")
    for label, times in results.items():
        print(f"  {label:<20} " + " ".join("%.1f" % t for t in times))
    print(f"load average (1, 5, 15 min) at start: {load_start}; at end: {load_average()}"
          f" ({os.cpu_count()} CPUs: a higher load means other processes competed)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, quick, no timing claims")
    parser.add_argument("--threads", type=int, default=2, help="compute threads (default 2)")
    worker_group = parser.add_argument_group("worker (internal)")
    worker_group.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag, kind in (("--kind", str), ("--variant", str), ("--path", str),
                       ("--n-vocab", int), ("--tokens", int), ("--warmup", int),
                       ("--runs", int), ("--logits-out", str)):
        worker_group.add_argument(flag, type=kind, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        worker(arguments)
    else:
        main(arguments)
