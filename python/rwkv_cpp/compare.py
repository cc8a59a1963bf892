"""Compare two models' logits over one token stream: KL divergence, max-abs
difference and top-1 agreement — the precise way to see what a quantization
changes.

    python -m rwkv_cpp.compare A B [--text FILE | --random N] [-n N] [-t THREADS] [--tokenizer NAME]
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np

from ._cli import (Progress, add_quiet_argument, add_threads_argument, add_tokenizer_argument, add_version_argument,
                   cancellable, positive_int, read_text, report_error)
from ._model import Model
from ._scoring import kl_rows
from .errors import RWKVError
from .tokenizers import for_model


@dataclass
class Comparison:
    n_tokens: int
    kl_mean: float       # mean over positions of KL(softmax(A) || softmax(B))
    kl_max: float
    max_abs: float       # max |logits_A - logits_B|
    rel_rms: float       # RMS(logits_B - logits_A) / RMS(logits_A)
    top1_agreement: float

    def line(self):
        return ("tokens: %d  KL mean %.3e  max %.3e  max-abs %.4f  rel-RMS %.4f  top-1 agreement %.2f%%" % (
            self.n_tokens, self.kl_mean, self.kl_max, self.max_abs, self.rel_rms, 100 * self.top1_agreement))


def compare_logits(ref, other):
    """Comparison of two [T, V] logit arrays (ref = A)."""
    ref = np.asarray(ref, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    kl = kl_rows(ref, other)
    return Comparison(
        n_tokens=int(ref.shape[0]),
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        max_abs=float(np.abs(other - ref).max()),
        rel_rms=float(np.sqrt(((other - ref) ** 2).mean() / (ref ** 2).mean())),
        top1_agreement=float((ref.argmax(-1) == other.argmax(-1)).mean()),
    )


def compare_models(model_a, model_b, tokens, chunk=256, progress=None, n_threads=None):
    """Feeds the same tokens to both models (state carried) and compares
    the logits at every position.  Models are paths (opened with
    ``n_threads``) or open Models; ``progress(fraction)`` after each chunk."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if tokens.size == 0:
        raise ValueError("no tokens to compare the models on")
    opened = []

    def _open(m):
        if isinstance(m, Model):
            return m
        opened.append(Model(m, n_threads=n_threads))
        return opened[-1]

    try:
        a, b = _open(model_a), _open(model_b)
        if a.n_vocab != b.n_vocab:
            raise ValueError("the models have different vocabularies (%d vs %d)" % (a.n_vocab, b.n_vocab))
        la, lb, sa, sb = [], [], None, None
        for i in range(0, tokens.size, chunk):
            part = tokens[i:i + chunk]
            x, sa = a.eval_sequence(part, sa, all_logits=True)
            y, sb = b.eval_sequence(part, sb, all_logits=True)
            la.append(x)
            lb.append(y)
            if progress:
                progress(min(i + chunk, tokens.size) / tokens.size)
        return compare_logits(np.concatenate(la), np.concatenate(lb))
    finally:
        for m in opened:
            m.close()


#: tokens compared when neither --random nor --max-tokens says how many
DEFAULT_RANDOM_TOKENS = 256
DEFAULT_TEXT_TOKENS = 1024


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m rwkv_cpp.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="reference model (e.g. the FP32 file)")
    ap.add_argument("b", help="model to compare (e.g. a quantized file)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--text", help="UTF-8 text file to feed (tokenized with the model's tokenizer)")
    src.add_argument("--random", type=positive_int, default=None, metavar="N",
                     help="N random tokens (the default, with N = --max-tokens or %d)" % DEFAULT_RANDOM_TOKENS)
    ap.add_argument("-n", "--max-tokens", type=positive_int, default=None, metavar="N",
                    help="feed at most N tokens (default: all --random ones, %d of a --text)" % DEFAULT_TEXT_TOKENS)
    add_tokenizer_argument(ap)
    add_threads_argument(ap)
    ap.add_argument("-s", "--seed", type=int, default=0, help="seed of the random tokens (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    add_quiet_argument(ap)
    add_version_argument(ap)
    return ap.parse_args(argv)


def _tokens(args, model):
    if args.text:
        tokens = for_model(model, args.tokenizer).encode(read_text(args.text))
        return tokens[:args.max_tokens or DEFAULT_TEXT_TOKENS]
    n = args.random or args.max_tokens or DEFAULT_RANDOM_TOKENS
    return np.random.default_rng(args.seed).integers(0, model.n_vocab, n)[:args.max_tokens]


@cancellable()
def main(argv=None):
    args = parse_args(argv)
    try:
        with Model(args.a, n_threads=args.threads) as a, Model(args.b, n_threads=args.threads) as b:
            tokens = _tokens(args, a)
            bar = Progress("comparing %d tokens" % len(tokens), enabled=not args.quiet)
            try:
                result = compare_models(a, b, tokens, progress=bar.update)
            finally:
                bar.close()
    except (RWKVError, OSError, ValueError) as exc:
        return report_error(exc)
    print(json.dumps(asdict(result)) if args.json else result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
