"""Tokenizers of RWKV models: text <-> token ids.

- ``WorldTokenizer()``: the RWKV "World" vocabulary (``rwkv_vocab_v20230424``)
  of RWKV-5/6/7 World models: greedy longest match over UTF-8 bytes, run by
  the C library.  Ids are identical to the official ``TRIE_TOKENIZER``.
- ``Tokenizer20B()``: the GPT-NeoX 20B BPE of the RWKV-4 Pile models, through
  the ``tokenizers`` package (imported only when this class is used).
- ``ByteTokenizer()``: token id = byte value (byte-level test models).

Each has ``encode(text) -> list[int]``, ``decode(ids) -> str``,
``decode_bytes(ids) -> bytes`` and ``decoder()``, an incremental decoder for
streaming that holds back partial UTF-8 sequences until they are complete.

Text is ``str`` (it must be valid Unicode: a lone surrogate, such as the
escapes Python makes of undecodable input bytes, is a ``ValueError``) or
``bytes`` (any bytes for the World and byte tokenizers; valid UTF-8 for 20B).
``decode`` never raises on ids of the vocabulary: bytes that are not valid
UTF-8 become U+FFFD; ``decode_bytes`` returns the exact bytes.

``get(name)`` returns the tokenizer of a name (``world``, ``20B``,
``bytes``); ``for_model(model)`` the one recorded in a model file.
"""

import codecs
import functools
import json
import os
from pathlib import Path

import numpy as np

from ._lib import ffi, lib
from .errors import error_for

DATA_DIR = Path(__file__).resolve().parent / "data"
WORLD_VOCAB_PATH = DATA_DIR / "rwkv_vocab_v20230424.txt"
TOKENIZER_20B_PATH = DATA_DIR / "20B_tokenizer.json"

#: the names ``get`` knows, as written in model files (``rwkv.tokenizer``).
NAMES = ("world", "20B", "bytes")

_ERROR_BUF_SIZE = 1024


class Tokenizer:
    """Common interface; subclasses define ``_encode_bytes`` and ``_table``
    (``_table[id]`` = the bytes of token ``id``)."""

    name = ""
    #: id of the end-of-text token (decodes to nothing), or None.
    eos_id = None

    @property
    def n_vocab(self):
        """One more than the largest id this tokenizer produces or decodes."""
        return len(self._table)

    def encode(self, text):
        """Token ids of ``text`` (``str`` or ``bytes``)."""
        return self._encode_bytes(_utf8(text))

    def decode_bytes(self, ids):
        """The exact bytes of ``ids``; an id outside the vocabulary is a ValueError."""
        table = self._table
        try:
            return b"".join([table[_check_id(i, len(table))] for i in ids])
        except TypeError:
            raise ValueError("token ids must be integers") from None

    def decode(self, ids):
        """The text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decoder(self):
        """A new ``IncrementalDecoder`` for streaming."""
        return IncrementalDecoder(self)

    def __repr__(self):
        return "<rwkv_cpp.tokenizers.%s n_vocab=%d>" % (type(self).__name__, self.n_vocab)


class IncrementalDecoder:
    """Turns ids into text as it becomes valid UTF-8.

    ``feed(ids)`` returns the text completed by these ids; a partial UTF-8
    sequence at the end is held back until later ids complete it.  A byte
    sequence that can never be valid becomes U+FFFD.  ``flush()`` returns
    what is held back (as U+FFFD) and resets the decoder.
    """

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids):
        if isinstance(ids, (int, np.integer)):
            ids = [ids]
        return self._utf8.decode(self._tokenizer.decode_bytes(ids))

    def flush(self):
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    @property
    def pending(self):
        """True when a partial UTF-8 sequence is held back."""
        return bool(self._utf8.getstate()[0])


# ---------------------------------------------------------------------------
# Byte tokenizer
# ---------------------------------------------------------------------------


class ByteTokenizer(Tokenizer):
    """Token id = byte value (0..255)."""

    name = "bytes"
    _table = [bytes([b]) for b in range(256)]

    def _encode_bytes(self, data):
        return list(data)


# ---------------------------------------------------------------------------
# World tokenizer
# ---------------------------------------------------------------------------


class WorldTokenizer(Tokenizer):
    """The RWKV World tokenizer: greedy longest match over UTF-8 bytes.

    ``path`` is a vocabulary file in the official format (one line per
    token: ``id python-literal byte-length``); default: the bundled
    ``rwkv_vocab_v20230424.txt``.  Id 0, not in the file, is the end of text
    and decodes to nothing.
    """

    name = "world"
    eos_id = 0

    def __init__(self, path=None):
        table = _world_table(os.fspath(path or WORLD_VOCAB_PATH))
        self._table = table
        self._handle = _make_native_tokenizer(table)

    def _encode_bytes(self, data):
        # each id covers at least one byte, so len(data) ids always suffice
        out = np.empty(max(len(data), 1), dtype=np.uint32)
        n_out = ffi.new("size_t *")
        status = lib.rwkv_tokenizer_encode(
            self._handle, ffi.from_buffer("uint8_t[]", data), len(data),
            ffi.cast("uint32_t *", ffi.from_buffer(out)), out.size, n_out)
        if status != lib.RWKV_STATUS_OK:
            raise error_for(status, "rwkv_tokenizer_encode failed (%d ids)" % n_out[0])
        return out[: n_out[0]].tolist()

    def close(self):
        """Frees the native tokenizer now (otherwise when collected)."""
        if self._handle is not None:
            ffi.release(self._handle)
            self._handle = None


def parse_vocab_line(line):
    """``(id, bytes)`` of one line ``id python-literal byte-length``.

    The literal is a Python ``str`` (encoded as UTF-8) or ``bytes`` literal;
    those without a backslash are taken verbatim (most lines), the others go
    through ``ast.literal_eval``.  The byte length must match.
    """
    import ast

    first, last = line.index(" "), line.rindex(" ")
    token_id, literal, length = int(line[:first]), line[first + 1:last], int(line[last + 1:])
    if "\\" not in literal and len(literal) >= 2 and literal[0] in "'\"" and literal[-1] == literal[0]:
        value = literal[1:-1].encode("utf-8")
    else:
        value = ast.literal_eval(literal)
        if isinstance(value, str):
            value = value.encode("utf-8")
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError("vocabulary line %r: the literal is not %d bytes" % (line[:80], length))
    return token_id, value


@functools.lru_cache(maxsize=4)
def _world_table(path):
    """Tuple id -> bytes (b"" for ids absent from the file)."""
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    entries = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token_id, value = parse_vocab_line(line.rstrip("\r"))
        except (ValueError, SyntaxError) as exc:
            raise ValueError("%s:%d: %s" % (path, number, exc)) from None
        if token_id < 0 or token_id in entries:
            raise ValueError("%s:%d: bad or repeated id %d" % (path, number, token_id))
        entries[token_id] = value
    if not entries:
        raise ValueError("%s: empty vocabulary" % path)
    table = [b""] * (max(entries) + 1)
    for token_id, value in entries.items():
        table[token_id] = value
    return tuple(table)


def _make_native_tokenizer(table):
    """The C tokenizer of every non-empty entry of ``table``."""
    ids = np.array([i for i, value in enumerate(table) if value], dtype=np.uint32)
    lengths = np.array([len(table[i]) for i in ids], dtype=np.uint32)
    data = b"".join(table[i] for i in ids)
    errbuf = ffi.new("char[]", _ERROR_BUF_SIZE)
    out = ffi.new("struct rwkv_tokenizer **")
    status = lib.rwkv_tokenizer_init(
        ffi.from_buffer("uint8_t[]", data), len(data),
        ffi.cast("uint32_t *", ffi.from_buffer(lengths)),
        ffi.cast("uint32_t *", ffi.from_buffer(ids)), ids.size, out, errbuf, _ERROR_BUF_SIZE)
    if status != lib.RWKV_STATUS_OK:
        raise error_for(status, ffi.string(errbuf).decode("utf-8", errors="replace"))
    return ffi.gc(out[0], lib.rwkv_tokenizer_free)


# ---------------------------------------------------------------------------
# 20B tokenizer
# ---------------------------------------------------------------------------


class Tokenizer20B(Tokenizer):
    """The GPT-NeoX 20B BPE (RWKV-4 Pile models), through ``tokenizers``.

    ``encode`` is ``tokenizers.Tokenizer.encode(text).ids``, as the official
    pipeline calls it (the tokenizer NFC-normalises the text first).  Special
    tokens (``<|endoftext|>``, id 0) decode to nothing, as in
    ``tokenizers.Tokenizer.decode``.
    """

    name = "20B"
    eos_id = 0

    def __init__(self, path=None):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise ImportError(
                "the 20B tokenizer needs the 'tokenizers' package: pip install tokenizers") from None
        path = os.fspath(path or TOKENIZER_20B_PATH)
        self._hf = HFTokenizer.from_file(path)
        self._table = _bpe_byte_table(path)

    def encode(self, text):
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError("the 20B tokenizer needs valid UTF-8: %s" % exc) from None
        else:
            _utf8(text)  # the same check (and message) as the other tokenizers
        return self._hf.encode(text).ids


def _gpt2_unicode_to_byte():
    """The inverse of GPT-2's byte-level alphabet: printable bytes stand for
    themselves, the other 68 bytes for the code points 256, 257, ..."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    mapping = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


@functools.lru_cache(maxsize=4)
def _bpe_byte_table(path):
    """Tuple id -> bytes of a byte-level BPE tokenizer JSON."""
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    to_byte = _gpt2_unicode_to_byte()
    entries = {}
    for token, token_id in spec["model"]["vocab"].items():
        entries[token_id] = bytes(to_byte[c] for c in token)
    for added in spec.get("added_tokens", []):
        # added tokens are stored as plain text; special ones are skipped in decoding
        entries[added["id"]] = b"" if added.get("special") else added["content"].encode("utf-8")
    table = [b""] * (max(entries) + 1)
    for token_id, value in entries.items():
        table[token_id] = value
    return tuple(table)


# ---------------------------------------------------------------------------
# Choosing a tokenizer
# ---------------------------------------------------------------------------

_CLASSES = {"world": WorldTokenizer, "20b": Tokenizer20B, "bytes": ByteTokenizer}


@functools.lru_cache(maxsize=None)
def get(name):
    """The tokenizer called ``name`` (``world``, ``20B`` or ``bytes``;
    case-insensitive), shared by every caller."""
    cls = _CLASSES.get(str(name).lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError("unknown tokenizer %r; the names are: %s" % (name, ", ".join(NAMES)))
    return cls()


def for_model(model, override=None):
    """The tokenizer of ``model``: ``override`` (a name or a ``Tokenizer``)
    if given, else the one named in the model file.  Fails when the model
    records none or when the tokenizer's ids exceed the model's vocabulary."""
    if isinstance(override, Tokenizer):
        tokenizer = override
    elif override is not None:
        tokenizer = get(override)
    elif model.tokenizer_name:
        tokenizer = get(model.tokenizer_name)
    else:
        raise ValueError(
            "the model file records no tokenizer; choose one (%s)" % ", ".join(NAMES))
    if tokenizer.n_vocab > model.n_vocab:
        raise ValueError(
            "tokenizer %r has ids up to %d but the model's vocabulary is %d: "
            "this tokenizer does not belong to this model"
            % (tokenizer.name, tokenizer.n_vocab - 1, model.n_vocab))
    return tokenizer


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _utf8(text):
    """``text`` as UTF-8 bytes; a ``str`` with a lone surrogate is a ValueError."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    if not isinstance(text, str):
        raise TypeError("text must be str or bytes, not %s" % type(text).__name__)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            "text is not valid Unicode: lone surrogate %s at index %d (undecodable input "
            "bytes?  decode them with errors='replace', or pass bytes)"
            % ("U+%04X" % ord(text[exc.start]), exc.start)) from None


def _check_id(token_id, n_vocab):
    if not 0 <= token_id < n_vocab:
        raise ValueError("token id %d is outside the vocabulary (0..%d)" % (token_id, n_vocab - 1))
    return token_id
