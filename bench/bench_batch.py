"""Batched decoding (Context.eval_batch, C rwkv_eval_batch): aggregate
decode tokens/s and the latency of one step at batch sizes 1 to 32, beside
the prefill tokens/s of the same model (the compute-bound ceiling) and the
peak memory, for random-weight RWKV-4 169M and 1.5B and RWKV-7 169M models.

    python -m bench.bench_batch [--models rwkv4-169m rwkv4-1.5b rwkv7-169m] [--types Q4_0 Q5_1 FP16]
        [--batches 1 2 4 8 16 32] [--threads 2] [--procs 1] [--decode-steps 16]
        [--llama-batched-bench BIN --llama-model rwkv7-169m=MODEL.gguf] [--smoke]

Method:
1. models: RWKV-4 from bench.harness.rwkv4_files, RWKV-7 169M (L12 D768
   V65536, head size 64) from rwkv7_files here: random weights (numpy, no
   torch) generated once, converted, quantized, cached in bench/cache/;
2. each (model, type) runs in a fresh worker process (bench/worker.py,
   kind ``batch``): first a check that a mixed batch (a prompt, decode
   steps, carried states) gives each sequence the bits of evaluating it
   alone (the run fails otherwise); prefill tokens/s of 128 tokens (best of
   2); then for each batch size B, B sequences each after its own 8-token
   prompt, 2 warm-up steps and --decode-steps timed steps, one eval_batch
   call per step decoding one token of each sequence;
3. a cell is the median over the steps (and --procs processes): step ms,
   aggregate tokens/s = B / step time; "x batch 1" is that over batch 1's
   tokens/s (target: >= 3 at batch 8) and "% prefill" the batch's tokens/s
   over the prefill tokens/s (target: >= 60% at batch 32);
4. peak RSS (VmHWM) of the worker beside the file size and the state size
   (the expected peak: weights once + B states + graph buffers).

llama.cpp's own batched decoding (``llama-batched-bench``) fills the last
column when --llama-batched-bench names its binary and --llama-model gives
the llama.cpp GGUF of a model (NAME=PATH, repeatable): its S_TG t/s at each
batch size (-npp 128 -ntg --decode-steps -npl the batch sizes); "-" without.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from . import harness
from .harness import machine_line, print_table, run_worker, rwkv4_files

MODELS = ("rwkv4-169m", "rwkv4-1.5b", "rwkv7-169m")
TYPES = ("Q4_0", "Q5_1", "FP16")
BATCHES = (1, 2, 4, 8, 16, 32)
PREFILL = 128
SMOKE_MODELS = ("rwkv4-smoke", "rwkv7-smoke")


#: random RWKV-7 shapes: name -> (n_layer, n_embed, n_vocab, head_size).
RWKV7_SHAPES = {"169m": (12, 768, 65536, 64), "smoke": (2, 64, 256, 16)}


def rwkv7_files(name: str, types) -> Dict[str, Path]:
    """{type: GGUF} of the random RWKV-7 model of shape ``name``
    (RWKV7_SHAPES; numpy weights, no torch), made once and cached in
    bench/cache/: FP32 and FP16 converted from the state dict, the other
    types quantized from FP32."""
    from rwkv_cpp.convert import convert_state_dict
    from rwkv_cpp.convert.random_model import make_state_dict
    from rwkv_cpp.quantize import quantize

    harness.CACHE.mkdir(exist_ok=True)
    n_layer, n_embed, n_vocab, head_size = RWKV7_SHAPES[name]
    base = harness.CACHE / ("batch-rwkv7-%s" % name)
    out = {}
    for t in sorted(types, key=lambda t: t not in ("FP32", "FP16")):
        path = Path("%s-%s.gguf" % (base, t))
        if not path.exists() and t in ("FP32", "FP16"):
            print("generating and converting rwkv7 %s to %s ..." % (name, t), flush=True)
            sd = make_state_dict("7.0", n_vocab, n_embed, n_layer, head_size, seed=0)
            convert_state_dict(sd, str(path), t)
        elif not path.exists():
            fp32 = rwkv7_files(name, ["FP32"])["FP32"]
            print("quantizing %s ..." % path.name, flush=True)
            quantize(fp32, path, t)
        out[t] = path
    return out


def model_files(name: str, types) -> Dict[str, Path]:
    family, _, shape = name.partition("-")
    if family == "rwkv4":
        return rwkv4_files(shape, types)
    return rwkv7_files(shape, types)


def llama_batched(args, name: str) -> Dict[int, float]:
    """{batch: S_TG t/s} of llama-batched-bench on the llama.cpp GGUF given
    for ``name`` by --llama-model, {} when not asked."""
    model = dict(m.split("=", 1) for m in args.llama_model).get(name)
    if not args.llama_batched_bench or not model:
        return {}
    cmd = [args.llama_batched_bench, "-m", model, "-t", str(args.threads), "-npp", str(PREFILL),
           "-ntg", str(args.decode_steps), "-npl", ",".join(map(str, args.batches)),
           "-c", str((PREFILL + args.decode_steps) * max(args.batches))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    speeds = {}
    # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and re.fullmatch(r"\d+", cells[2]):
            speeds[int(cells[2])] = float(cells[7])
    return speeds


def measure(name: str, t: str, path: Path, args) -> List[dict]:
    runs = []
    for _ in range(args.procs):
        r = run_worker("batch", path, args.threads, decode_tokens=args.decode_steps, prefill=(PREFILL,),
                       batches=args.batches)
        if not r["batch_equal"]:
            raise SystemExit("%s %s: a sequence of a batch differs from itself alone" % (name, t))
        runs.append(r)
    return runs


def rows(name: str, t: str, runs: List[dict], args, llama: Dict[int, float]):
    prefill = statistics.median(r["prefill_%d" % PREFILL] for r in runs)
    rss = max(r["rss_mib"] for r in runs)
    base = None
    for b in args.batches:
        step = statistics.median(ms for r in runs for ms in r["step_ms_%d" % b])
        tps = 1e3 * b / step
        base = tps if b == args.batches[0] else base
        yield [name, t, b, "%.2f" % step, "%.0f" % tps, "%.2f" % (tps / base), "%.0f" % prefill,
               "%.0f%%" % (100 * tps / prefill), "%.0f" % rss, "%.1f + %d x %.2f" % (
                   runs[0]["weights_mib"], b, runs[0]["state_mib"]),
               "%.0f" % llama[b] if b in llama else "-"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.bench_batch", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS + SMOKE_MODELS)
    ap.add_argument("--types", nargs="+", default=list(TYPES), help="matrix types (default: %(default)s)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes to time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--procs", type=int, default=1, help="worker processes per (model, type)")
    ap.add_argument("--decode-steps", type=int, default=16, help="timed steps per batch size")
    ap.add_argument("--llama-batched-bench", help="llama.cpp's llama-batched-bench binary (optional)")
    ap.add_argument("--llama-model", action="append", default=[],
                    help="NAME=PATH: the llama.cpp GGUF of model NAME for --llama-batched-bench")
    ap.add_argument("--smoke", action="store_true", help="tiny models, few steps: checks the bench runs")
    ap.add_argument("--cache-dir", default=None,
                    help="where models are generated and kept (default: bench/cache)")
    args = ap.parse_args(argv)
    if args.batches[0] != 1 and 1 in args.batches:
        ap.error("--batches: put 1 first (the column 'x batch 1' divides by it)")
    if args.smoke:
        args.models, args.batches, args.decode_steps = list(SMOKE_MODELS), [1, 2, 4], 2
    if args.cache_dir:
        harness.CACHE = Path(args.cache_dir)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    print("bench_batch: " + machine_line(args.threads))
    header = ["model", "type", "batch", "step ms", "tokens/s", "x batch 1", "prefill %d tok/s" % PREFILL,
              "% prefill", "peak RSS MiB", "weights + B x state MiB", "llama.cpp tok/s"]
    table: List[List[object]] = []
    for name in args.models:
        files = model_files(name, args.types)
        llama = llama_batched(args, name)
        for t in args.types:
            table += list(rows(name, t, measure(name, t, files[t], args), args, llama))
    print_table(header, table)


if __name__ == "__main__":
    main()
