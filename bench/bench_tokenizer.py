"""Encode speed of the World tokenizer (rwkv_cpp, C++ trie) against the
official ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``.

    python -m bench.bench_tokenizer [--text FILE ...] [--repeats N]

Default text: every Shakespeare file of ../shared/data/shakespeare/ (about
5 MB).  First checks that both tokenizers give the same ids on the whole
text, then times ``WorldTokenizer.encode(str) -> list[int]`` (best of
``--repeats`` runs; this includes the UTF-8 encoding and the list of Python
ints) and the official encoder once, and prints MB/s (1 MB = 10^6 bytes of
UTF-8).
"""

import argparse
import time
from pathlib import Path

from rwkv_cpp.tokenizers import WorldTokenizer

from .harness import REPO, print_table

SHAKESPEARE = REPO.parent / "shared" / "data" / "shakespeare"


def load_text(files):
    paths = [Path(f) for f in files] if files else sorted(SHAKESPEARE.glob("*.txt"))
    if not paths:
        raise SystemExit("no text: pass --text FILE (the default %s is absent)" % SHAKESPEARE)
    return "".join(p.read_text(encoding="utf-8") for p in paths)


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.bench_tokenizer", description=__doc__.splitlines()[0])
    parser.add_argument("--text", nargs="*", help="text files (default: the Shakespeare corpus)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-official", action="store_true", help="skip the official tokenizer")
    args = parser.parse_args()
    text = load_text(args.text)
    n_bytes = len(text.encode("utf-8"))

    start = time.perf_counter()
    ours = WorldTokenizer()
    load_s = time.perf_counter() - start
    ours_s, ids = best_time(lambda: ours.encode(text), args.repeats)
    rows = [("rwkv_cpp WorldTokenizer", load_s, ours_s)]

    if not args.no_official:
        import rwkv.rwkv_tokenizer as official_module  # optional: the official package (--no-official)

        vocab = Path(official_module.__file__).with_name("rwkv_vocab_v20230424.txt")
        start = time.perf_counter()
        official = official_module.TRIE_TOKENIZER(str(vocab))
        official_load_s = time.perf_counter() - start
        official_s, official_ids = best_time(lambda: official.encode(text), 1)
        if official_ids != ids:
            raise SystemExit("MISMATCH: the ids differ from the official tokenizer's")
        rows.append(("official TRIE_TOKENIZER", official_load_s, official_s))

    print("text: %.2f MB, %d tokens (ids checked against the official tokenizer: %s)"
          % (n_bytes / 1e6, len(ids), "no" if args.no_official else "yes, identical"))
    print_table(["tokenizer", "load s", "encode s", "MB/s"],
                [[name, "%.2f" % load, "%.3f" % seconds, "%.1f" % (n_bytes / 1e6 / seconds)]
                 for name, load, seconds in rows])


if __name__ == "__main__":
    main()
