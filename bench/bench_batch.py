"""Batched decoding (Context.eval_batch, C rwkv_eval_batch): aggregate
decode tokens/s and the latency of one step at batch sizes 1 to 32, beside
the prefill tokens/s of the same model (the compute-bound ceiling) and the
peak memory, for random-weight RWKV-4 169M and 1.5B and RWKV-7 169M models.

    python -m bench.bench_batch [--models rwkv4-169m rwkv4-1.5b rwkv7-169m] [--types Q4_0 Q5_1 FP16]
        [--batches 1 2 4 8 16 32] [--threads 2] [--procs 1] [--decode-steps 16]
        [--peers [--peers-cache DIR]] [--smoke]

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

llama.cpp's own batched decoding (``llama-batched-bench``, llama.cpp as
built by ``python -m bench.bench_peers``) fills the last column with --peers,
for RWKV-7 (llama.cpp has no RWKV-4): its aggregate decode tokens/s at each
batch size (B sequences of 128 prompt tokens, --decode-steps generated) on
llama.cpp's own conversion of the same weights and type; "-" otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
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


#: our batch models that bench.bench_peers also makes for llama.cpp (same generator, seed and shape).
PEER_MODELS = {"rwkv7-169m": "rwkv7-0.1b"}


def llama_batched(args, llama, name: str, t: str) -> Dict[int, float]:
    """{batch: aggregate decode tok/s} of llama-batched-bench on llama.cpp's
    conversion of the same model and type, {} without --peers or for a
    model llama.cpp does not run (RWKV-4)."""
    if llama is None or name not in PEER_MODELS:
        return {}
    from .bench_peers import peer_files, random_state_dict
    from .peers import llamacpp

    peer = PEER_MODELS[name]
    path = peer_files(llama, peer, [t], lambda: random_state_dict(peer))[t]
    rows = llamacpp.batched_bench(llama, path, args.threads, args.batches, PREFILL, args.decode_steps)
    return {r["batch"]: r["decode_tps"] for r in rows}


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
    ap.add_argument("--peers", action="store_true",
                    help="also run llama.cpp's llama-batched-bench on the same RWKV-7 model and type (llama.cpp "
                         "as built by python -m bench.bench_peers; skipped with a note when it is not built)")
    ap.add_argument("--peers-cache", default=None, help="the peers' cache folder (see bench.bench_peers)")
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


def peer_llama(args):
    """The built llama.cpp for --peers, or None (with a note when asked but unavailable)."""
    if not args.peers:
        return None
    from .peers import llamacpp

    try:
        return llamacpp.ensure(args.peers_cache, allow_build=False)
    except llamacpp.Unavailable as exc:
        print("no llama.cpp column: %s" % exc, file=sys.stderr)
        return None


def main(argv=None) -> None:
    args = parse_args(argv)
    print("bench_batch: " + machine_line(args.threads))
    header = ["model", "type", "batch", "step ms", "tokens/s", "x batch 1", "prefill %d tok/s" % PREFILL,
              "% prefill", "peak RSS MiB", "weights + B x state MiB", "llama.cpp tok/s"]
    table: List[List[object]] = []
    llama = peer_llama(args)
    for name in args.models:
        files = model_files(name, args.types)
        for t in args.types:
            table += list(rows(name, t, measure(name, t, files[t], args), args, llama_batched(args, llama, name, t)))
    print_table(header, table)


if __name__ == "__main__":
    main()
