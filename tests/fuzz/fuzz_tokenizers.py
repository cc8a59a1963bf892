"""Fuzz the tokenizers (World, 20B, bytes) on arbitrary bytes, text and ids.

Contract (rwkv_cpp/tokenizers.py): ``encode`` takes any bytes (World,
bytes; 20B: valid UTF-8, else ``ValueError``) or any ``str`` without lone
surrogates (else ``ValueError``) and returns ids inside the vocabulary;
``decode_bytes`` of ids inside the vocabulary never fails, outside it is a
``ValueError``; ``decode`` is ``decode_bytes`` with U+FFFD for invalid
UTF-8, and the incremental decoder fed id by id gives the same text.
Round trips, where they are the contract: World and bytes return the exact
bytes (``decode_bytes(encode(b)) == b``); 20B returns the NFC-normalised
text for text without special tokens.

The first byte of an input picks the tokenizer and what to do with the
rest (encode it as bytes, as text decoded with surrogate escapes, or decode
it as little-endian 16-bit ids).

Run: ``python -m tests.fuzz.fuzz_tokenizers --seconds N``.
"""

from __future__ import annotations

import sys
import unicodedata
from typing import List

from rwkv_cpp import tokenizers

from . import _runner

_NAMES = ("world", "20B", "bytes")
_MODES = ("bytes", "text", "ids")


def seeds(folder: str) -> List[bytes]:
    texts = ["Hello, world!", "naïve café — 日本語 🙂", "<|endoftext|>x", "\r\n\t  code()  ",
             "e\u0301 combining"]
    out = []
    for t, _ in enumerate(_NAMES):
        for m, _ in enumerate(_MODES):
            for text in texts:
                out.append(bytes([t * len(_MODES) + m]) + text.encode("utf-8"))
        out.append(bytes([t * len(_MODES)]) + b"\xff\xfe\xc3(\xe2\x82")  # invalid UTF-8
    return out


def _check_encode(tok, text) -> None:
    try:
        ids = tok.encode(text)
    except ValueError:
        if isinstance(text, str):
            assert any(0xD800 <= ord(c) <= 0xDFFF for c in text), "ValueError on valid text"
        else:
            assert tok.name == "20B", "ValueError on bytes from a tokenizer that takes any bytes"
        return
    assert all(isinstance(i, int) and 0 <= i < tok.n_vocab for i in ids)
    raw = text if isinstance(text, bytes) else text.encode("utf-8")
    if tok.name != "20B":
        assert tok.decode_bytes(ids) == raw, "round trip lost bytes"
        assert tok.encode(raw) == ids
    elif not any(special in raw for special in (b"<|endoftext|>", b"<|padding|>")):
        want = unicodedata.normalize("NFC", raw.decode("utf-8"))
        assert tok.decode(ids) == want, "20B round trip differs from the NFC text"
    _check_decode(tok, ids)


def _check_decode(tok, ids) -> None:
    try:
        text = tok.decode(ids)
    except ValueError:
        assert any(not 0 <= i < tok.n_vocab for i in ids), "ValueError on ids of the vocabulary"
        return
    assert text == tok.decode_bytes(ids).decode("utf-8", errors="replace")
    decoder = tok.decoder()
    streamed = "".join(decoder.feed(i) for i in ids) + decoder.flush()
    assert streamed == text, "incremental decoding differs from decode"


def one_input(data: bytes) -> None:
    if not data:
        return
    tok = tokenizers.get(_NAMES[data[0] // len(_MODES) % len(_NAMES)])
    mode, rest = _MODES[data[0] % len(_MODES)], data[1:]
    if mode == "bytes":
        _check_encode(tok, rest)
    elif mode == "text":
        _check_encode(tok, rest.decode("utf-8", errors="surrogateescape"))
    else:
        _check_decode(tok, [int.from_bytes(rest[i:i + 2], "little") * (1 + (rest[i] & 1))
                            for i in range(0, len(rest) - 1, 2)])


if __name__ == "__main__":
    sys.exit(_runner.main(__spec__.name, seeds, one_input))
