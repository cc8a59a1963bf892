"""Ours beside llama.cpp, built and run on this machine in the same run.

    python -m bench.bench_peers [--models rwkv7-0.1b rwkv6-0.1b] [--types FP16 Q8_0 Q5_1 Q4_0]
        [--threads 2] [--procs 3] [--prefill 128 512] [--peers-cache DIR] [--no-build] [--smoke]

For each random-weight model (official tensor names, made by
``rwkv_cpp.convert.random_weights``): our GGUF (our converter, then our
quantizer) and llama.cpp's GGUF of the same weights (written as a Hugging
Face folder, converted by llama.cpp's own ``convert_hf_to_gguf.py``, quantized
by ``llama-quantize``; heads F16 in both).  Each round measures the read
bandwidth, then runs one process of ours (bench.worker) and one
``llama-bench`` process per type, interleaved; the table has medians over the
rounds: decode ms/token, % of the bandwidth floor (the bytes of weights one
token reads / the bandwidth measured in the same round), prefill tokens/s and
the ratios ours : llama.cpp; and our load and first-token times, packing at
load and mapping the packed-weight cache (``Model(packed_cache=...)``: a
process before the rounds writes it; one more process per round loads from
it).

llama.cpp is built once in a cache folder outside the repository
(bench/peers/llamacpp.py); when it cannot be built (no network, no compiler)
the program says why and exits 0 without a table (``--require`` makes that an
error).  rwkv.cpp is not on the package index: its figures are not here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from . import harness
from .harness import (bytes_per_token, floor_ms, machine_line, measure_bandwidth, print_table, run_worker)
from .peers import llamacpp

#: the World vocabulary llama.cpp's converter reads from the HF folder.
WORLD_VOCAB = Path(harness.rwkv_cpp.__file__).parent / "data" / "rwkv_vocab_v20230424.txt"

#: random models: name -> (version, n_layer, n_embed, n_vocab).  The World
#: vocabulary size, so that llama.cpp's converter takes its tokenizer.
MODELS = {"rwkv7-0.1b": ("7.0", 12, 768, 65536), "rwkv7-1.5b": ("7.0", 24, 2048, 65536),
          "rwkv6-0.1b": ("6.0", 12, 768, 65536), "smoke7": ("7.0", 2, 64, 65536)}


@dataclass(frozen=True)
class Pair:
    """One model in one type: our file and llama.cpp's file of the same weights."""

    model: str
    type: str
    ours: Path
    peer: Path

    @property
    def cache(self) -> Path:
        """Our file's packed-weight cache, made for the run and removed after it."""
        return self.ours.with_suffix(".packed")


def random_state_dict(name: str):
    from rwkv_cpp.convert.random_weights import make_state_dict

    version, n_layer, n_embed, n_vocab = MODELS[name]
    return make_state_dict(version, n_vocab, n_embed, n_layer, 64, None, 0)


def our_files(name: str, types: List[str], sd) -> Dict[str, Path]:
    """Our GGUF of each type (FP16 converted, the others quantized from it), cached."""
    from rwkv_cpp.convert import convert_state_dict
    from rwkv_cpp.quantize import quantize

    harness.CACHE.mkdir(parents=True, exist_ok=True)
    f16 = harness.CACHE / ("peers-%s-FP16.gguf" % name)
    if not f16.exists():
        print("converting %s with ours ..." % name, flush=True)
        convert_state_dict(sd(), str(f16), "FP16")
    out = {}
    for t in types:
        path = harness.CACHE / ("peers-%s-%s.gguf" % (name, t))
        if not path.exists():
            quantize(f16, path, t)
        out[t] = path
    return out


def peer_files(llama, name: str, types: List[str], sd) -> Dict[str, Path]:
    """llama.cpp's GGUF of each type, from the same weights, cached."""
    from rwkv_cpp.convert.hf_layout import write_hf_folder

    folder = llama.cache / "models"
    folder.mkdir(parents=True, exist_ok=True)
    f16 = folder / ("%s-F16.gguf" % name)
    if not f16.exists():
        with tempfile.TemporaryDirectory() as tmp:
            print("writing %s as a Hugging Face folder for llama.cpp's converter ..." % name, flush=True)
            write_hf_folder(sd(), tmp, world_vocab=str(WORLD_VOCAB))
            llamacpp.convert_hf(llama, Path(tmp), f16, "f16")
    return {t: f16 if t == "FP16" else llamacpp.quantize(llama, f16, folder / ("%s-%s.gguf" % (name, t)), t)
            for t in types}


def measure(pairs: List[Pair], llama, args) -> Dict[Pair, List[dict]]:
    """{pair: [round results]}: per round one bandwidth probe, then ours and
    llama.cpp's process for every pair, interleaved."""
    runs = {p: [] for p in pairs}
    try:
        for p in pairs:  # writes each packed-weight cache (and warms the page cache)
            p.cache.unlink(missing_ok=True)
            run_worker("ours", p.ours, args.threads, decode_tokens=0, prefill=[], packed_cache=p.cache)
        for _ in range(args.procs):
            for p in pairs:
                bw = measure_bandwidth(args.threads, *args.membw).median_gbs
                ours = run_worker("ours", p.ours, args.threads, decode_tokens=args.decode_tokens,
                                  prefill=args.prefill)
                cached = run_worker("ours", p.ours, args.threads, decode_tokens=0, prefill=[], packed_cache=p.cache)
                peer = llamacpp.bench(llama, p.peer, args.threads, args.prefill, args.decode_tokens)
                runs[p].append({"bw": bw, "ours": ours, "cached": cached, "peer": peer})
    finally:  # the caches are as large as the models: never left behind
        for p in pairs:
            p.cache.unlink(missing_ok=True)
    return runs


def rows(runs: Dict[Pair, List[dict]], args):
    med = statistics.median
    for p, rs in runs.items():
        ours_ms = med(med(r["ours"]["decode_ms"]) for r in rs)
        peer_ms = med(r["peer"]["decode_ms"] for r in rs)
        bw = med(r["bw"] for r in rs)
        ob, pb = bytes_per_token(p.ours), peer_bytes_per_token(p.peer)
        row = [p.model, p.type, "%.2f" % ours_ms, "%.2f" % peer_ms, "%.2f" % (ours_ms / peer_ms), "%.1f" % bw,
               "%.0f%%" % med(100 * floor_ms(ob, r["bw"]) / med(r["ours"]["decode_ms"]) for r in rs),
               "%.0f%%" % med(100 * floor_ms(pb, r["bw"]) / r["peer"]["decode_ms"] for r in rs)]
        for n in args.prefill:
            o = med(r["ours"]["prefill_%d" % n] for r in rs)
            q = med(r["peer"]["prefill_%d" % n] for r in rs)
            row += ["%.0f / %.0f" % (o, q), "%.2f" % (o / q)]
        row += ["%.2f / %.2f" % (med(r[k]["load_s"] for r in rs), med(r[k]["first_token_s"] for r in rs))
                for k in ("ours", "cached")]
        yield row


def peer_bytes_per_token(path: Path) -> int:
    """Weight bytes one llama.cpp decode step reads: every tensor, but one row of the embedding."""
    from tests.gguf_reader import read_gguf

    total = 0
    for name, info in read_gguf(str(path)).tensors.items():
        total += info.nbytes // info.shape[0] if name == "token_embd.weight" else info.nbytes
    return total


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.bench_peers", description=__doc__.split("\n\n")[0],
                                 epilog="llama.cpp is built from the llama-cpp-python %s sdist in the peers cache "
                                        "(default ~/.cache/rwkv_cpp/peers)." % llamacpp.LLAMA_CPP_PYTHON)
    ap.add_argument("--models", nargs="+", default=["rwkv7-0.1b", "rwkv6-0.1b"], choices=sorted(MODELS))
    ap.add_argument("--types", nargs="+", default=["FP16", "Q8_0", "Q5_1", "Q4_0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--procs", type=int, default=3, help="rounds: processes per runtime and type")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--prefill", type=int, nargs="+", default=[128, 512], help="prefill lengths to time")
    ap.add_argument("--peers-cache", default=None, help="where llama.cpp is built and its models kept")
    ap.add_argument("--cache-dir", default=None, help="where our models are kept (default: bench/cache)")
    ap.add_argument("--no-build", action="store_true", help="use llama.cpp only if it is already built")
    ap.add_argument("--require", action="store_true", help="fail (exit 1) when llama.cpp is unavailable")
    ap.add_argument("--smoke", action="store_true", help="tiny model, one round: checks the program runs")
    args = ap.parse_args(argv)
    if args.cache_dir:
        harness.CACHE = Path(args.cache_dir)
    if args.smoke:
        # Q4_0 too: the block types take other kernels in llama.cpp (its AMX
        # ones, which crash here, were built in once on an AMX machine)
        args.models, args.types, args.procs, args.decode_tokens, args.prefill = ["smoke7"], ["FP16", "Q4_0"], 1, 4, [16]
    args.membw = (64, 2) if args.smoke else (1024, 5)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        llama = llamacpp.ensure(args.peers_cache, allow_build=not args.no_build)
    except llamacpp.Unavailable as exc:
        print("llama.cpp is not available, no peer table: %s" % exc, file=sys.stderr)
        return 1 if args.require else 0
    print("\n%s, peer: %s" % (machine_line(args.threads), llama.version()), flush=True)
    pairs = []
    for name in args.models:
        sd = lambda name=name: random_state_dict(name)  # noqa: E731 (made only when a file is missing)
        ours, peer = our_files(name, args.types, sd), peer_files(llama, name, args.types, sd)
        pairs += [Pair(name, t, ours[t], peer[t]) for t in args.types]
    runs = measure(pairs, llama, args)
    header = ["model", "type", "ours ms/token", "llama.cpp ms/token", "time ours : llama.cpp", "read GB/s",
              "ours % of floor", "llama.cpp % of floor"]
    for n in args.prefill:
        header += ["prefill %d tok/s ours / llama.cpp" % n, "ratio"]
    header += ["ours load / first token s: packing", "from the packed cache"]
    print_table(header, rows(runs, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
