"""Collects the per-channel statistics that normalise sentence embeddings.

    python -m rwkv_cpp.embed_stats [MODEL] CORPUS... -o STATS [--parts SPEC]
        [--passage-tokens N] [--max-passages M] [--seed S]

The model is MODEL (when more than one file is given), or -m/--model, or
else the bundled demo model.

Each corpus file (UTF-8 text) is tokenized whole and cut into consecutive
passages of N tokens (a shorter tail is dropped); when there are more than M
passages, M are drawn at random (seeded, so a run is reproducible).  Each
passage is read from the initial state, and the per-channel mean and
standard deviation of the embeddings of its final state are accumulated.
The file written records the model (shape and file fingerprint) and the
parts; ``Model.embed(..., stats=STATS)`` refuses it for another model or for
parts it does not cover.  By default every part of every layer is collected
(``--parts all``), so one file serves any selection.

Use text like the texts you will embed, and N like their length: the state
after 20 tokens and after 500 tokens are not distributed alike.
"""

import argparse
import os
import sys

import numpy as np

from ._cli import (Progress, add_model_option, add_quiet_argument, add_threads_argument, add_tokenizer_argument,
                   add_version_argument, cancellable, check_output_path, read_text, report_error, resolve_model_path,
                   split_model_positional)
from ._model import Model
from .embedding import ALL_PARTS, EmbedStats, Parts, RunningStats, check_model, from_state
from .errors import RWKVError
from .tokenizers import for_model

DEFAULT_PASSAGE_TOKENS = 128
DEFAULT_MAX_PASSAGES = 2000


def corpus_passages(tokenizer, paths, passage_tokens=DEFAULT_PASSAGE_TOKENS, max_passages=None, seed=0):
    """``(path, start, tokens)`` of the passages of ``passage_tokens`` tokens
    cut from each file in ``paths`` (at most ``max_passages``, drawn at
    random with ``seed``), in file order."""
    if passage_tokens < 1:
        raise ValueError("passage_tokens must be >= 1, got %d" % passage_tokens)
    passages = []
    for path in paths:
        tokens = np.asarray(tokenizer.encode(read_text(path)), dtype=np.uint32)
        for start in range(0, tokens.size - passage_tokens + 1, passage_tokens):
            passages.append((os.fspath(path), start, tokens[start:start + passage_tokens]))
    if not passages:
        raise ValueError("the corpus has no passage of %d tokens" % passage_tokens)
    if max_passages is not None and len(passages) > max_passages:
        keep = np.sort(np.random.default_rng(seed).choice(len(passages), size=max_passages, replace=False))
        passages = [passages[i] for i in keep]
    return passages


def collect(model, passages, parts=ALL_PARTS, progress=None, sources=()):
    """``EmbedStats`` of the embeddings (``parts``) of ``passages`` (token
    sequences, each read from the initial state)."""
    check_model(model)
    parts = Parts.parse(parts).resolved(model.n_layer)
    running = RunningStats(parts.dim(model.n_layer, model.n_embed))
    lengths = set()
    for i, tokens in enumerate(passages):
        _, state = model.eval_sequence(tokens, logits=False)
        running.update(from_state(state, model.n_layer, model.n_embed, parts))
        lengths.add(len(tokens))
        if progress:
            progress((i + 1) / len(passages))
    if running.count < 2:
        raise ValueError("need at least 2 passages to estimate a spread, got %d" % running.count)
    return EmbedStats.from_running(model, parts, running, passage_tokens=max(lengths),
                                   sources=[os.path.basename(s) for s in sources])


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m rwkv_cpp.embed_stats",
                                 description="Per-channel statistics for normalising sentence embeddings.",
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", metavar="[MODEL] CORPUS",
                    help="model file (GGUF or rwkv.cpp .bin, RWKV-4; default: the bundled demo model), "
                         "then UTF-8 text files")
    add_model_option(ap)
    ap.add_argument("-o", "--output", required=True, help="statistics file to write")
    ap.add_argument("--parts", default=ALL_PARTS, help="parts to collect (default: all parts of every layer)")
    ap.add_argument("--passage-tokens", type=int, default=DEFAULT_PASSAGE_TOKENS, help="tokens per passage")
    ap.add_argument("--max-passages", type=int, default=DEFAULT_MAX_PASSAGES,
                    help="at most this many passages, drawn at random (0: all)")
    ap.add_argument("-s", "--seed", type=int, default=0, help="seed of the passage draw")
    add_tokenizer_argument(ap)
    add_threads_argument(ap)
    add_quiet_argument(ap)
    add_version_argument(ap)
    args = ap.parse_args(argv)
    args.model, args.corpus = split_model_positional(args.model, args.paths, 1)
    return args


@cancellable("interrupted; no output written")
def main(argv=None):
    args = parse_args(argv)
    path = resolve_model_path(args)
    if path is None:
        return 2
    try:
        check_output_path(args.output, [path] + args.corpus)
        with Model(path, n_threads=args.threads) as model:
            check_model(model)
            passages = corpus_passages(for_model(model, args.tokenizer), args.corpus, args.passage_tokens,
                                       args.max_passages or None, args.seed)
            bar = Progress("embedding %d passages" % len(passages), enabled=not args.quiet)
            try:
                stats = collect(model, [p[2] for p in passages], args.parts, bar.update, sources=args.corpus)
            finally:
                bar.close()
            stats.save(args.output)
    except (RWKVError, OSError, ValueError) as exc:
        return report_error(exc)
    print("wrote %s: %d passages of %d tokens from %d file(s); parts %s (%d channels)" % (
        args.output, stats.n_passages, stats.passage_tokens, len(args.corpus), stats.parts.spec, stats.mean.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
