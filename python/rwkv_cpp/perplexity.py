"""Perplexity of a model on a text file, and LAMBADA accuracy.

    python -m rwkv_cpp.perplexity [MODEL] FILE [--tokenizer NAME] [--max-tokens N]
    python -m rwkv_cpp.perplexity [MODEL] --lambada lambada_test.jsonl

The model is MODEL, or -m/--model, or else the bundled demo model; the text
file FILE may also be given with -f/--file (llama.cpp's spelling).

The text is streamed through the model in chunks, the state carried from one
chunk to the next, so any length works in constant memory.  LAMBADA is
scored the way the RWKV model cards report it: for each passage the context
(all but the last word, after a token 0 = <|endoftext|>) is fed, then the
last word's tokens are scored; accuracy counts passages whose every target
token is the model's greedy choice, perplexity is exp(mean over passages of
the target's negative log-likelihood).
"""

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

import numpy as np

from ._cli import (Progress, add_model_option, add_quiet_argument, add_threads_argument, add_tokenizer_argument,
                   add_version_argument, cancellable, positive_int, read_text, report_error, resolve_model_path,
                   split_model_positional)
from ._model import Model
from ._scoring import read_token_file, token_nll
from .errors import RWKVError
from .tokenizers import for_model

DEFAULT_CHUNK = 256


@dataclass
class PerplexityResult:
    n_tokens: int          # tokens scored (all but the first)
    cross_entropy: float   # nats per token
    perplexity: float

    def line(self):
        return "tokens scored: %d  cross-entropy: %.4f nats/token  perplexity: %.3f" % (
            self.n_tokens, self.cross_entropy, self.perplexity)


@dataclass
class LambadaResult:
    n_passages: int
    accuracy: float
    perplexity: float

    def line(self):
        return "LAMBADA passages: %d  accuracy: %.2f%%  perplexity: %.3f" % (
            self.n_passages, 100 * self.accuracy, self.perplexity)


def perplexity(model, tokens, chunk=DEFAULT_CHUNK, progress=None):
    """Token-level cross-entropy of ``tokens`` (each predicted from all the
    ones before it; the first is only context)."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if chunk < 1:
        raise ValueError("chunk must be >= 1, got %d" % chunk)
    if tokens.size < 2:
        raise ValueError("need at least 2 tokens to measure perplexity, got %d" % tokens.size)
    total, state, done = 0.0, None, 0
    n_pred = tokens.size - 1
    while done < n_pred:
        n = min(chunk, n_pred - done)
        logits, state = model.eval_sequence(tokens[done:done + n], state, all_logits=True)
        total += float(token_nll(logits, tokens[done + 1:done + n + 1]).sum())
        done += n
        if progress:
            progress(done / n_pred)
    ce = total / n_pred
    return PerplexityResult(n_pred, ce, math.exp(ce))


def lambada_passages(path):
    """(context, target) pairs: the target is the last word with its space.
    The file is JSON lines with a ``text`` each (the LAMBADA test set as
    the RWKV evaluations use it)."""
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise ValueError("%s, line %d: not a JSON object with a \"text\"" % (path, number)) from None
            cut = text.rfind(" ")
            yield text[:cut], text[cut:]


def lambada(model, tokenizer, path, max_passages=None, progress=None):
    passages = list(lambada_passages(path))[:max_passages]
    if not passages:
        raise ValueError("no LAMBADA passages in %s" % path)
    nll_sum, correct = 0.0, 0
    for i, (ctx, target) in enumerate(passages):
        src = [0] + tokenizer.encode(ctx)
        dst = tokenizer.encode(target)
        logits, _ = model.eval_sequence(src + dst[:-1], all_logits=True)
        scored = logits[len(src) - 1:]
        nll_sum += float(token_nll(scored, np.asarray(dst)).sum())
        correct += bool((scored.argmax(axis=-1) == np.asarray(dst)).all())
        if progress:
            progress((i + 1) / len(passages))
    return LambadaResult(len(passages), correct / len(passages), math.exp(nll_sum / len(passages)))


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m rwkv_cpp.perplexity",
                                 description="Perplexity of an RWKV model on a text file, or LAMBADA accuracy.",
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", metavar="[MODEL] FILE",
                    help="model file (GGUF or rwkv.cpp .bin; default: the bundled demo model), then the UTF-8 "
                         "text file to score")
    add_model_option(ap)
    ap.add_argument("-f", "--file", help="the text file to score (instead of the positional FILE)")
    add_tokenizer_argument(ap)
    ap.add_argument("--tokens", action="store_true",
                    help="FILE is pre-tokenized: a .npy array or whitespace-separated token ids")
    ap.add_argument("--max-tokens", type=positive_int, default=None, help="score only the first N tokens")
    ap.add_argument("--lambada", metavar="PATH", default=None,
                    help="score LAMBADA from this JSON-lines file (lambada_test.jsonl, one {\"text\": ...} a line)")
    ap.add_argument("--max-passages", type=positive_int, default=None, help="LAMBADA: only the first N passages")
    ap.add_argument("--chunk", type=positive_int, default=DEFAULT_CHUNK, help="tokens per evaluation call")
    add_threads_argument(ap)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    add_quiet_argument(ap)
    add_version_argument(ap)
    args = ap.parse_args(argv)
    needs_file = args.file is None and args.lambada is None
    args.model, rest = split_model_positional(args.model, args.paths, int(needs_file))
    if len(rest) > int(needs_file):
        ap.error("unexpected arguments: %s" % " ".join(rest[int(needs_file):]))
    if rest:
        args.file = rest[0]
    if (args.file is None) == (args.lambada is None):
        ap.error("give either a text FILE or --lambada PATH")
    return args


def _score(args, model, progress):
    if args.lambada is not None:
        return lambada(model, for_model(model, args.tokenizer), args.lambada, args.max_passages, progress)
    if args.tokens:
        tokens = read_token_file(args.file)
    else:
        tokens = for_model(model, args.tokenizer).encode(read_text(args.file))
    if args.max_tokens is not None:
        tokens = tokens[:args.max_tokens]
    return perplexity(model, tokens, args.chunk, progress)


@cancellable()
def main(argv=None):
    args = parse_args(argv)
    path = resolve_model_path(args)
    if path is None:
        return 2
    try:
        with Model(path, n_threads=args.threads) as model:
            bar = Progress("scoring", enabled=not args.quiet)
            try:
                result = _score(args, model, bar.update)
            finally:
                bar.close()
    except (RWKVError, OSError, ValueError) as exc:
        return report_error(exc)
    print(json.dumps(asdict(result)) if args.json else result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
