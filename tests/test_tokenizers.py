"""Tokenizers: the World tokenizer against the official TRIE_TOKENIZER, the
20B tokenizer against a committed fixture of ids and a plain-Python BPE (its
decoding against the ``tokenizers`` package), round trips, streaming
decoding, the C API's argument checks, and choosing a tokenizer."""

import ast
import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from rwkv_cpp import tokenizers
from rwkv_cpp._lib import ffi, lib
import bpe_20b
from shared_data import SHARED_DATA, need

SHAKESPEARE = SHARED_DATA / "shakespeare"
LAMBADA = SHARED_DATA / "eval" / "lambada_test.jsonl"
SHARED_20B_JSON = SHARED_DATA / "tokenizers" / "20B_tokenizer.json"


def shakespeare_texts():
    folder = need(SHAKESPEARE)
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def lambada_texts():
    with open(need(LAMBADA), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# ---------------------------------------------------------------------------
# random text
# ---------------------------------------------------------------------------

#: (first, last) code point ranges the random strings draw from
CHARACTER_CLASSES = [
    (0x20, 0x7E),      # printable ASCII
    (0x00, 0x1F),      # C0 controls (NUL, tab, new lines, ...)
    (0x7F, 0x9F),      # DEL and C1 controls
    (0xA0, 0x24F),     # Latin-1 and Latin extended
    (0x300, 0x36F),    # combining marks
    (0x400, 0x4FF),    # Cyrillic
    (0x4E00, 0x9FFF),  # CJK ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0x1F300, 0x1FAFF),  # emoji
    (0xE000, 0xF8FF),  # private use
    (0x10000, 0x10FFFF),  # any supplementary-plane code point
    (0x0, 0xD7FF),     # any BMP code point below the surrogates
    (0xE000, 0xFFFF),  # any BMP code point above them
]
REPEATED = [" ", "\n", "-", "=", "#", "\t", "0", "ab", "\u3000"]


def random_strings(seed, count=300, max_len=120):
    """Seeded random strings mixing the classes above, with runs of repeated
    characters (long vocabulary entries are runs of spaces, dashes, ...)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        parts = []
        for _ in range(int(rng.integers(0, max_len // 4 + 1))):
            if rng.random() < 0.15:
                parts.append(REPEATED[rng.integers(len(REPEATED))] * int(rng.integers(1, 140)))
            else:
                lo, hi = CHARACTER_CLASSES[rng.integers(len(CHARACTER_CLASSES))]
                parts.append("".join(chr(int(c)) for c in rng.integers(lo, hi + 1, size=rng.integers(1, 8))))
        out.append("".join(parts))
    return out


# ---------------------------------------------------------------------------
# World tokenizer
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_world():
    module = pytest.importorskip("rwkv.rwkv_tokenizer", reason="the official package rwkv==0.8.32 is not installed")
    vocab = Path(module.__file__).with_name("rwkv_vocab_v20230424.txt")
    return module.TRIE_TOKENIZER(str(vocab))


@pytest.fixture(scope="module")
def world():
    return tokenizers.WorldTokenizer()


def test_bundled_world_vocabulary_is_the_official_one(official_world, world):
    assert world.n_vocab == max(official_world.idx2token) + 1
    for token_id, value in official_world.idx2token.items():
        assert world.decode_bytes([token_id]) == value


def test_vocab_line_fast_path_equals_literal_eval():
    with open(tokenizers.WORLD_VOCAB_PATH, encoding="utf-8") as f:
        for line in f.read().split("\n"):
            if not line:
                continue
            value = ast.literal_eval(line[line.index(" "):line.rindex(" ")].strip())
            value = value.encode("utf-8") if isinstance(value, str) else value
            assert tokenizers.parse_vocab_line(line) == (int(line.split(" ")[0]), value)


@pytest.mark.parametrize("line", ["5 'ab' 3", "5 b'\\xff' 2", "x 'a' 1", "5 'a' x", "5 [1] 1"])
def test_bad_vocab_line_is_a_clear_error(line):
    with pytest.raises((ValueError, SyntaxError)):
        tokenizers.parse_vocab_line(line)


def test_world_equals_official_on_shakespeare(official_world, world):
    for name, text in shakespeare_texts().items():
        ids = world.encode(text)
        assert ids == official_world.encode(text), name
        assert world.decode(ids) == text, name


def test_world_equals_official_on_lambada(official_world, world):
    texts = lambada_texts()
    joined = "\n\n".join(texts)
    assert world.encode(joined) == official_world.encode(joined)
    for text in texts[::10]:
        assert world.encode(text) == official_world.encode(text)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_world_equals_official_on_random_unicode(official_world, world, seed):
    for text in random_strings(seed):
        ids = world.encode(text)
        assert ids == official_world.encode(text), repr(text)
        assert world.decode(ids) == text, repr(text)


def test_world_on_random_bytes_equals_official(official_world, world):
    rng = np.random.default_rng(7)
    for _ in range(200):
        data = rng.integers(0, 256, size=rng.integers(1, 300), dtype=np.uint8).tobytes()
        ids = world.encode(data)
        assert ids == official_world.encodeBytes(data)
        assert world.decode_bytes(ids) == data


def test_world_edge_cases(world):
    assert world.encode("") == []
    assert world.decode([]) == ""
    assert world.encode(" " * 128) == [65529]  # the longest entry
    assert world.encode("\n\n") == world.encode(b"\n\n")
    assert world.decode([0]) == ""  # end of text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        world.decode([world.n_vocab])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        world.decode([-1])


# ---------------------------------------------------------------------------
# invalid input text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["world", "bytes", "20B"])
def test_lone_surrogate_is_a_clear_error(name):
    tok = tokenizers.get(name)
    undecodable = b"ok \xff\xfe".decode("utf-8", errors="surrogateescape")
    with pytest.raises(ValueError, match=r"lone surrogate U\+DCFF at index 3"):
        tok.encode(undecodable)
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("\ud800")
    with pytest.raises(TypeError):
        tok.encode(42)


@pytest.mark.parametrize("name", ["world", "bytes"])
def test_invalid_utf8_bytes_round_trip(name):
    tok = tokenizers.get(name)
    data = b"ok \xff\xfe \xe4\xbd"  # invalid bytes and a truncated sequence
    ids = tok.encode(data)
    assert tok.decode_bytes(ids) == data
    assert tok.decode(ids) == data.decode("utf-8", errors="replace")


def test_20b_refuses_invalid_utf8_bytes():
    tok = tokenizers.get("20B")
    with pytest.raises(ValueError, match="valid UTF-8"):
        tok.encode(b"\xff")
    assert tok.encode("héllo".encode()) == tok.encode("héllo")


# ---------------------------------------------------------------------------
# streaming decoder
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["world", "bytes", "20B"])
def test_incremental_decoder_holds_back_partial_utf8(name):
    tok = tokenizers.get(name)
    text = "héllo 世界 🎉🎉 e\u0301 done"
    if name == "20B":
        text = unicodedata.normalize("NFC", text)  # the 20B tokenizer normalises to NFC
    decoder = tok.decoder()
    pieces = [decoder.feed(token) for token in tok.encode(text)]
    assert decoder.flush() == ""
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_incremental_decoder_partial_and_invalid_bytes():
    decoder = tokenizers.ByteTokenizer().decoder()
    emoji = "🎉".encode()
    assert decoder.feed(list(emoji[:3])) == ""
    assert decoder.pending
    assert decoder.feed([emoji[3]]) == "🎉"
    assert decoder.feed([0xFF, 0x41]) == "\ufffdA"  # never valid: replaced at once
    assert decoder.feed([0xE4]) == ""
    assert decoder.flush() == "\ufffd"  # a partial sequence at the end
    assert not decoder.pending


# ---------------------------------------------------------------------------
# byte tokenizer
# ---------------------------------------------------------------------------


def test_byte_tokenizer():
    tok = tokenizers.ByteTokenizer()
    assert tok.encode("aé") == [0x61, 0xC3, 0xA9]
    assert tok.decode([0x61, 0xC3, 0xA9]) == "aé"
    assert tok.n_vocab == 256
    for text in random_strings(3, count=50):
        assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([256])


# ---------------------------------------------------------------------------
# 20B tokenizer
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_20b():
    hf = pytest.importorskip("tokenizers", reason="the 'tokenizers' package is not installed")
    return hf.Tokenizer.from_file(str(tokenizers.TOKENIZER_20B_PATH))


def test_bundled_20b_json_is_the_shared_one():
    assert tokenizers.TOKENIZER_20B_PATH.read_bytes() == need(SHARED_20B_JSON).read_bytes()


# Tokenizer20B.encode *is* the tokenizers package on the bundled JSON, so it
# is checked against ids that do not come from it at test time: a committed
# fixture (tests/data/tokenizer_20b_ids.json, its "source" says how it was
# made) and tests/bpe_20b.py, a plain-Python BPE written from the algorithm.
ID_FIXTURE = Path(__file__).parent / "data" / "tokenizer_20b_ids.json"


def test_20b_encode_matches_the_id_fixture():
    ours = tokenizers.Tokenizer20B()
    cases = json.loads(ID_FIXTURE.read_text(encoding="utf-8"))["cases"]
    assert len(cases) >= 10
    for case in cases:
        assert ours.encode(case["text"]) == case["ids"], repr(case["text"])
        if "<|" not in case["text"]:  # decoding drops the special tokens
            assert ours.decode(case["ids"]) == unicodedata.normalize("NFC", case["text"])


def test_20b_id_fixture_agrees_with_the_plain_bpe():
    bpe = bpe_20b.PlainBpe(tokenizers.TOKENIZER_20B_PATH)
    checked = 0
    for case in json.loads(ID_FIXTURE.read_text(encoding="utf-8"))["cases"]:
        if case["text"].isascii() and "  " not in case["text"] and "<|" not in case["text"]:
            assert bpe.encode(case["text"]) == case["ids"], repr(case["text"])
            checked += 1
    assert checked >= 5


def test_20b_encode_matches_the_plain_bpe_on_shared_texts():
    """Every ASCII line without runs of spaces of two plays, in one piece."""
    bpe = bpe_20b.PlainBpe(tokenizers.TOKENIZER_20B_PATH)
    ours = tokenizers.Tokenizer20B()
    plays = shakespeare_texts()
    lines = [line for name in ("hamlet.txt", "tempest.txt") for line in plays[name].splitlines(keepends=True)
             if line.isascii() and "  " not in line and line.strip()]
    assert len(lines) > 1000
    text = "".join(lines)
    assert ours.encode(text) == bpe.encode(text)


def test_20b_decodes_like_tokenizers(hf_20b):
    ours = tokenizers.Tokenizer20B()
    assert ours.n_vocab == hf_20b.get_vocab_size()
    for token_id in range(ours.n_vocab):  # partial UTF-8, added and special tokens
        assert ours.decode([token_id]) == hf_20b.decode([token_id]), token_id
    rng = np.random.default_rng(5)
    for ids in rng.integers(0, ours.n_vocab, size=(100, 20)).tolist():
        assert ours.decode(ids) == hf_20b.decode(ids)


# ---------------------------------------------------------------------------
# the C API
# ---------------------------------------------------------------------------


def _native_init(entries):
    """Status and message of rwkv_tokenizer_init on ``entries`` (id -> bytes)."""
    ids = np.array(list(entries), dtype=np.uint32)
    lengths = np.array([len(v) for v in entries.values()], dtype=np.uint32)
    data = b"".join(entries.values())
    out = ffi.new("struct rwkv_tokenizer **")
    err = ffi.new("char[]", 256)
    status = lib.rwkv_tokenizer_init(ffi.from_buffer("uint8_t[]", data), len(data),
                                     ffi.cast("uint32_t *", ffi.from_buffer(lengths)),
                                     ffi.cast("uint32_t *", ffi.from_buffer(ids)), len(ids), out, err, 256)
    return status, ffi.string(err).decode(), out[0]


def _all_bytes():
    return {b + 1: bytes([b]) for b in range(256)}


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop(0x41 + 1), "single byte 0x41 is not an entry"),
    (lambda e: e.update({999: b"a"}), "same bytes"),
    (lambda e: e.update({999: b""}), "is empty"),
])
def test_native_init_rejects_bad_vocabularies(change, message):
    entries = _all_bytes()
    change(entries)
    status, text, handle = _native_init(entries)
    assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert message in text
    assert handle == ffi.NULL


def test_native_init_checks_lengths_and_arguments():
    out = ffi.new("struct rwkv_tokenizer **")
    err = ffi.new("char[]", 256)
    lengths = np.ones(256, dtype=np.uint32)
    ids = np.arange(256, dtype=np.uint32)
    data = bytes(range(256)) + b"x"  # one byte more than the lengths cover
    status = lib.rwkv_tokenizer_init(ffi.from_buffer("uint8_t[]", data), len(data),
                                     ffi.cast("uint32_t *", ffi.from_buffer(lengths)),
                                     ffi.cast("uint32_t *", ffi.from_buffer(ids)), 256, out, err, 256)
    assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert "sum to 256 bytes, data has 257" in ffi.string(err).decode()
    status = lib.rwkv_tokenizer_init(ffi.NULL, 0, ffi.NULL, ffi.NULL, 0, out, err, 256)
    assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert lib.rwkv_tokenizer_init(ffi.NULL, 0, ffi.NULL, ffi.NULL, 0, ffi.NULL, err, 256) != lib.RWKV_STATUS_OK
    lib.rwkv_tokenizer_free(ffi.NULL)


def test_native_encode_reports_the_needed_capacity():
    entries = _all_bytes()
    entries[1000] = b"ab"
    status, _, handle = _native_init(entries)
    assert status == lib.RWKV_STATUS_OK
    handle = ffi.gc(handle, lib.rwkv_tokenizer_free)
    text = b"abab-a"
    out = np.zeros(2, dtype=np.uint32)
    n_out = ffi.new("size_t *")
    status = lib.rwkv_tokenizer_encode(handle, text, len(text), ffi.cast("uint32_t *", ffi.from_buffer(out)),
                                       out.size, n_out)
    assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert n_out[0] == 4  # ab ab - a
    assert out.tolist() == [1000, 1000]
    out = np.zeros(4, dtype=np.uint32)
    status = lib.rwkv_tokenizer_encode(handle, text, len(text), ffi.cast("uint32_t *", ffi.from_buffer(out)),
                                       out.size, n_out)
    assert status == lib.RWKV_STATUS_OK
    assert out.tolist() == [1000, 1000, ord("-") + 1, ord("a") + 1]
    assert lib.rwkv_tokenizer_encode(ffi.NULL, text, 1, ffi.NULL, 0, n_out) == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert lib.rwkv_tokenizer_encode(handle, ffi.NULL, 0, ffi.NULL, 0, n_out) == lib.RWKV_STATUS_OK
    assert n_out[0] == 0


def test_world_tokenizer_close_is_idempotent():
    tok = tokenizers.WorldTokenizer()
    tok.close()
    tok.close()


# ---------------------------------------------------------------------------
# choosing a tokenizer
# ---------------------------------------------------------------------------


class FakeModel:
    def __init__(self, tokenizer_name, n_vocab):
        self.tokenizer_name = tokenizer_name
        self.n_vocab = n_vocab


def test_get_by_name():
    assert isinstance(tokenizers.get("world"), tokenizers.WorldTokenizer)
    assert isinstance(tokenizers.get("20B"), tokenizers.Tokenizer20B)
    assert isinstance(tokenizers.get("20b"), tokenizers.Tokenizer20B)
    assert isinstance(tokenizers.get("bytes"), tokenizers.ByteTokenizer)
    assert tokenizers.get("world") is tokenizers.get("world")


@pytest.mark.parametrize("name", ["gpt2", "", None, 3])
def test_unknown_tokenizer_name_lists_the_names(name):
    with pytest.raises(ValueError, match="unknown tokenizer.*world, 20B, bytes"):
        tokenizers.get(name)


def test_for_model():
    assert tokenizers.for_model(FakeModel("world", 65536)).name == "world"
    assert tokenizers.for_model(FakeModel("20B", 50277)).name == "20B"
    assert tokenizers.for_model(FakeModel("", 65536), "bytes").name == "bytes"
    byte_tok = tokenizers.ByteTokenizer()
    assert tokenizers.for_model(FakeModel("world", 65536), byte_tok) is byte_tok
    with pytest.raises(ValueError, match="records no tokenizer"):
        tokenizers.for_model(FakeModel("", 65536))
    with pytest.raises(ValueError, match="does not belong to this model"):
        tokenizers.for_model(FakeModel("bytes", 256), "world")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenizers.for_model(FakeModel("bytes", 256), "nope")


def test_tokenizer_package_is_optional_for_the_rest():
    # the 20B class imports 'tokenizers' only when made
    import sys
    assert "rwkv_cpp.tokenizers" in sys.modules
    source = Path(tokenizers.__file__).read_text()
    assert "\nimport tokenizers" not in source and "\nfrom tokenizers" not in source
    assert os.path.exists(tokenizers.TOKENIZER_20B_PATH)
