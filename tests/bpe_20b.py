"""A second, plain-Python implementation of the GPT-NeoX 20B byte-level BPE,
written from the algorithm (GPT-2's byte-to-unicode table, regex
pre-tokenisation, lowest-rank merge first), to cross-check the committed
20B id fixture independently of the ``tokenizers`` package.

Restricted to what ``re`` can express without Unicode classes: ASCII text
without runs of spaces or ``<|`` (the JSON's added tokens, whitespace runs
and specials, are matched before BPE; this implementation does not do that).
"""

from __future__ import annotations

import json
import re

# GPT-2's pattern with \p{L} and \p{N} narrowed to ASCII letters and digits.
ASCII_PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class PlainBpe:
    def __init__(self, json_path):
        model = json.load(open(json_path, encoding="utf-8"))["model"]
        self.vocab = model["vocab"]
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(model["merges"])}
        self.byte_chars = bytes_to_unicode()

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), len(self.ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == len(self.ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        if not text.isascii() or "  " in text or "<|" in text:
            raise ValueError("PlainBpe handles ASCII text without runs of spaces or added tokens only")
        ids = []
        for piece in ASCII_PATTERN.findall(text):
            word = "".join(self.byte_chars[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[p] for p in self._bpe(word))
        return ids
