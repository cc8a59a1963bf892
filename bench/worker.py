"""The child-process side of the benchmarks.

Every timed measurement runs in a fresh process, so that load time, first
token time and peak RSS are per process and one backend's caches cannot
help the next.  A worker prints one ``RESULT {json}`` line, which
:func:`bench.harness.run_worker` reads::

    python -m bench.worker ours MODEL.gguf --threads 2 [--decode-tokens 32] [--runs 1]
        [--prefill 128 512] [--check 16 --check-out LOGITS.npy] [--no-repack] [--package DIR]
        [--packed-cache FILE]
    python -m bench.worker official MODEL.pth --strategy "cpu fp32" --n-vocab 50277 --threads 2 ...
    python -m bench.worker batch MODEL.gguf --threads 2 --batches 1 2 4 8 --decode-tokens 16 --prefill 128

Method of one worker: load; one token (first-token time); the check
logits if asked (the logits after each of the first --check tokens, from
the initial state, saved to --check-out); 8 warm-up tokens; --runs timed
decodes of --decode-tokens tokens (one token per call, state carried);
each --prefill length once from the initial state, best of 2.

Method of a ``batch`` worker (bench.bench_batch): load; each --prefill
length, best of 2; a check that a mixed batch (a prompt, decode steps, a
carried state) gives every sequence the bits of evaluating it alone; then
for each --batches size B: B sequences, each from its own 8-token prompt
(one batch call), 2 warm-up steps, then --decode-tokens timed steps of one
``eval_batch`` call decoding one token of each of the B sequences (states
carried); per step the wall time of the call.

This module does not import rwkv_cpp at its top: ``ours`` first chooses
which package to load.  ``--package DIR`` imports rwkv_cpp from the folder
DIR only (:func:`bench.harness.library_packages` makes it: a copy of the
package beside another build's library), and checks that the library the
process mapped is the one in DIR.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

import numpy as np

#: tokens after the first one, before the timed decode.
WARMUP_TOKENS = 8
#: the random token ids every worker feeds (enough for a 512-token prefill).
TOKEN_COUNT = 600


def bench_tokens(n_vocab: int, count: int = TOKEN_COUNT, seed: int = 1) -> np.ndarray:
    """The benchmark's token ids: uniform over the vocabulary, fixed seed."""
    return np.random.default_rng(seed).integers(0, n_vocab, count).astype(np.uint32)


def report(result: dict) -> None:
    """The worker's answer: one line that bench.harness.run_worker parses."""
    print("RESULT " + json.dumps(result), flush=True)


class _PackageFinder(importlib.abc.MetaPathFinder):
    """Finds rwkv_cpp and its submodules in one package folder only, ahead
    of every other finder (an editable install's finder would otherwise
    take the modules from the installed project's sources)."""

    def __init__(self, package: str):
        self.root = os.path.dirname(os.path.abspath(package))

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "rwkv_cpp":
            return importlib.machinery.PathFinder.find_spec(fullname, [self.root])
        if fullname.startswith("rwkv_cpp."):
            return importlib.machinery.PathFinder.find_spec(fullname, path)
        return None


def import_rwkv_cpp(package: str = None):
    """The rwkv_cpp module: the installed one, or the one of the package
    folder ``package`` (named rwkv_cpp), all of whose modules and whose
    library then come from that folder."""
    if package is not None:
        sys.meta_path.insert(0, _PackageFinder(package))
    import rwkv_cpp
    if package is not None:
        _check_mapped_library(package)
    return rwkv_cpp


def _check_mapped_library(package: str) -> None:
    """Refuse to measure if the process mapped a librwkv_cpp other than the
    one in ``package`` (an editable install resolves the package's modules
    from its sources; the library must still come from ``package``)."""
    try:
        with open("/proc/self/maps") as f:
            mapped = {line.split()[-1] for line in f if "librwkv_cpp" in line}
    except OSError:
        return  # no /proc (not Linux): nothing to check
    want = os.path.realpath(package)
    wrong = sorted(p for p in mapped if os.path.dirname(os.path.realpath(p)) != want)
    if wrong or not mapped:
        raise SystemExit("bench worker: expected the library of %s, the process mapped %s"
                         % (package, ", ".join(sorted(mapped)) or "none"))


def measure_ours(args) -> dict:
    """Load, first token, check logits, warm-up, decode, prefill, peak RSS."""
    t0 = time.perf_counter()
    rwkv_cpp = import_rwkv_cpp(args.package)
    # packed_isa only when asked: builds from before the parameter lack it
    isa = {} if args.packed_isa == "auto" else {"packed_isa": args.packed_isa}
    cache = {} if args.packed_cache is None else {"packed_cache": args.packed_cache}
    m = rwkv_cpp.Model(args.model, n_threads=args.threads, repack=args.repack, **isa, **cache)
    t_load = time.perf_counter() - t0
    toks = bench_tokens(m.n_vocab, max(TOKEN_COUNT, 1 + WARMUP_TOKENS + args.decode_tokens, *args.prefill))
    t1 = time.perf_counter()
    logits, state = m.eval(int(toks[0]))
    res = {"load_s": t_load, "first_token_s": time.perf_counter() - t1}
    if args.check:
        np.save(args.check_out, m.eval_sequence(toks[:args.check], all_logits=True)[0])
    for tok in toks[1:1 + WARMUP_TOKENS]:
        logits, state = m.eval(int(tok), state, out_state=state)
    res["decode_ms"] = []
    timed = toks[1 + WARMUP_TOKENS:1 + WARMUP_TOKENS + args.decode_tokens]
    for _ in range(args.runs if args.decode_tokens else 0):
        t2 = time.perf_counter()
        for tok in timed:
            logits, state = m.eval(int(tok), state, out_state=state, out_logits=logits)
        res["decode_ms"].append(1e3 * (time.perf_counter() - t2) / args.decode_tokens)
    for n in args.prefill:
        best = 0.0
        for _ in range(2):
            t3 = time.perf_counter()
            m.eval_sequence(toks[:n], logits=False)
            best = max(best, n / (time.perf_counter() - t3))
        res["prefill_%d" % n] = best
    with open("/proc/self/status") as f:
        res["rss_mib"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    return res


def batch_matches_alone(m, toks) -> bool:
    """A prompt, two decode steps and one carried state in one batch, each
    against itself alone: equal bits (logits and state)."""
    _, carried = m.eval_sequence(toks[:5])
    sequences = [toks[10:40], toks[40:41], toks[41:42], toks[50:53]]
    states = [None, carried, None, carried]
    logits, new_states = m.eval_batch(sequences, states)
    for i, (seq, state) in enumerate(zip(sequences, states)):
        want_logits, want_state = m.eval_sequence(seq, state)
        if logits[i].tobytes() != want_logits.tobytes() or new_states[i].tobytes() != want_state.tobytes():
            return False
    return True


def measure_batch(args) -> dict:
    """Prefill, the batch-equals-alone check, then decode at each batch size."""
    rwkv_cpp = import_rwkv_cpp(args.package)
    m = rwkv_cpp.Model(args.model, n_threads=args.threads)
    toks = bench_tokens(m.n_vocab, max(TOKEN_COUNT, *args.prefill, 8 * max(args.batches) + 2 + args.decode_tokens))
    res = {"batch_equal": batch_matches_alone(m, toks)}
    for n in args.prefill:
        best = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            m.eval_sequence(toks[:n], logits=False)
            best = max(best, n / (time.perf_counter() - t0))
        res["prefill_%d" % n] = best
    for b in args.batches:
        _, states = m.eval_batch([toks[8 * i:8 * i + 8] for i in range(b)])
        step_ms = []
        for step in range(2 + args.decode_tokens):
            feed = [[int(toks[(step * 7 + i * 13) % len(toks)])] for i in range(b)]
            t1 = time.perf_counter()
            _, states = m.eval_batch(feed, states)
            if step >= 2:
                step_ms.append(1e3 * (time.perf_counter() - t1))
        res["step_ms_%d" % b] = step_ms
    with open("/proc/self/status") as f:
        res["rss_mib"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    res["weights_mib"] = os.path.getsize(args.model) / 2**20
    res["state_mib"] = m.state_len * 4 / 2**20
    return res


def measure_official(args) -> dict:
    """The official package (rwkv==0.8.32, torch) on a .pth: the same
    token sequence and the same steps as :func:`measure_ours`."""
    if args.no_jit:  # the official package's own switches, read at its import
        os.environ["RWKV_JIT_ON"], os.environ["RWKV_CUDA_ON"] = "0", "0"
    import torch
    from rwkv.model import RWKV

    torch.set_num_threads(args.threads)
    model = RWKV(model=args.model, strategy=args.strategy, verbose=False)
    toks = [int(t) for t in bench_tokens(args.n_vocab)]
    res = {"decode_ms": []}
    with torch.no_grad():
        if args.check:
            state, rows = None, []
            for tok in toks[:args.check]:
                out, state = model.forward([tok], state)
                rows.append(out.float().numpy().copy())
            np.save(args.check_out, np.stack(rows))
        _, state = model.forward(toks[:1], None)
        for tok in toks[1:1 + WARMUP_TOKENS]:
            _, state = model.forward([tok], state)
        timed = toks[1 + WARMUP_TOKENS:1 + WARMUP_TOKENS + args.decode_tokens]
        for _ in range(args.runs if args.decode_tokens else 0):
            t0 = time.perf_counter()
            for tok in timed:
                _, state = model.forward([tok], state)
            res["decode_ms"].append(1e3 * (time.perf_counter() - t0) / args.decode_tokens)
        for n in args.prefill:
            t1 = time.perf_counter()
            model.forward(toks[:n], None)
            res["prefill_%d" % n] = n / (time.perf_counter() - t1)
    return res


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("ours", "official", "batch"))
    ap.add_argument("model", help="GGUF file (ours) or .pth (official)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=32, help="tokens per timed decode (0: none)")
    ap.add_argument("--runs", type=int, default=1, help="timed decodes in this process")
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512], help="prefill lengths to time")
    ap.add_argument("--check", type=int, default=0, help="save the logits of this many first tokens")
    ap.add_argument("--check-out", help=".npy file for the check logits")
    ap.add_argument("--no-repack", dest="repack", action="store_false", help="ours: ggml's kernels")
    ap.add_argument("--packed-isa", default="auto", choices=["auto", "avx512", "avx2", "none"],
                    help="ours: cap the packed kernels (Model(packed_isa=...))")
    ap.add_argument("--package", help="ours: load rwkv_cpp from this folder (bench.harness.library_packages)")
    ap.add_argument("--packed-cache", help="ours: Model(packed_cache=...), the packed-weight cache file")
    ap.add_argument("--strategy", default="cpu fp32", help="official: the strategy string")
    ap.add_argument("--n-vocab", type=int, default=50277, help="official: vocabulary of the model")
    ap.add_argument("--no-jit", action="store_true", help="official: without TorchScript")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32],
                    help="batch: the batch sizes to time")
    args = ap.parse_args(argv)
    if args.check and not args.check_out:
        ap.error("--check needs --check-out")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    measure = {"ours": measure_ours, "official": measure_official, "batch": measure_batch}[args.kind]
    report(measure(args))


if __name__ == "__main__":
    main()
