"""Sentence embeddings (rwkv_cpp.embedding, rwkv_cpp.embed_stats).

Tolerances:
- EMBED_TOL (1e-5, max-abs on embeddings of the bundled Q5_1 demo model)
  for one call vs pieces with the state carried, and 1 vs 2 threads.  Both
  compute the same float32 maths; measured difference: exactly 0 (the
  quantized matrix products are row-wise and summed in the same order).
- Repeated calls: bitwise identical.
- Statistics: float64 accumulation against numpy on the stacked data, 1e-12
  relative; float32 file round trip exact.
"""

import struct
import types
from pathlib import Path

import numpy as np
import pytest

import rwkv_cpp
from conftest import SMALLEST
from rwkv_cpp import embed_stats
from rwkv_cpp._defaults import bundled_model_path
from rwkv_cpp.embedding import (
    DEFAULT_PARTS,
    EPS_REL,
    PART_NAMES,
    EmbedStats,
    EmbedStatsError,
    Parts,
    RunningStats,
    check_model,
    from_state,
    normalisation_scale,
)

EMBED_TOL = 1e-5
TEXT = ("ROMEO. But soft, what light through yonder window breaks?\n"
        "It is the east, and Juliet is the sun.\nArise, fair sun, and kill the envious moon,")


@pytest.fixture(scope="module")
def demo():
    if bundled_model_path() is None:
        pytest.skip("the bundled demo model is missing from this installation")
    with rwkv_cpp.Model.default(n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def tokens(demo):
    from rwkv_cpp.tokenizers import for_model

    return np.asarray(for_model(demo).encode(TEXT))


@pytest.fixture(scope="module")
def small_stats(demo, tokens):
    """Statistics of every part over 12 short passages (16 tokens each)."""
    passages = [np.roll(tokens, -3 * i)[:16] for i in range(12)]
    return embed_stats.collect(demo, passages, "all")


# -- parts --------------------------------------------------------------------


def test_parts_spec():
    p = Parts.parse("ffn_xx, wkv , att_xx")
    assert p.names == ("att_xx", "wkv", "ffn_xx") and p.layers is None  # canonical order
    assert p.spec == "att_xx,wkv,ffn_xx" and Parts.parse(p.spec) == p
    assert Parts.parse(["pp", "aa", "pp"]).names == ("aa", "pp")
    assert Parts.parse("all").names == PART_NAMES
    assert Parts.parse("wkv@-1").layer_indices(8) == (7,)
    assert Parts.parse("wkv@4:").layer_indices(8) == (4, 5, 6, 7)
    assert Parts.parse("wkv@::3,1").layer_indices(8) == (0, 1, 3, 6)
    assert Parts.parse("aa,bb@0,7").dim(8, 192) == 2 * 2 * 192
    assert Parts.parse(Parts.parse("wkv@-2:").spec).layer_indices(8) == (6, 7)
    assert Parts.parse(DEFAULT_PARTS).dim(8, 192) > 0


@pytest.mark.parametrize("bad", ["", "foo", "wkv,foo", "@1", "wkv@x", "wkv@1:2:3:4"])
def test_parts_spec_errors(bad):
    with pytest.raises(ValueError):
        Parts.parse(bad)


def test_parts_layer_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        Parts.parse("wkv@8").layer_indices(8)
    with pytest.raises(ValueError, match="no layer"):
        Parts.parse("wkv@5:3").layer_indices(8)


def test_from_state_layout():
    """state[layer, part, channel] = 100 layer + 10 part + channel / 1000
    (bb = 2 everywhere, so wkv = aa / 2); a second state with bb = 0 (the
    initial state's case) gives wkv = 0."""
    n_layer, n_embed = 3, 4
    grid = np.zeros((n_layer, 5, n_embed), dtype=np.float32)
    for layer in range(n_layer):
        for part in range(5):
            grid[layer, part] = 100 * layer + 10 * part + np.arange(n_embed) / 1000
    grid[:, 2] = 2.0
    initial = np.zeros_like(grid)
    states = np.stack([grid.ravel(), initial.ravel()])
    out = from_state(states, n_layer, n_embed, "ffn_xx,wkv,att_xx@0,2")
    expected = np.concatenate([grid[0, 0], grid[0, 1] / 2, grid[0, 4], grid[2, 0], grid[2, 1] / 2, grid[2, 4]])
    assert out.dtype == np.float32 and out.shape == (2, 6 * n_embed)
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[1], 0)
    np.testing.assert_array_equal(from_state(grid.ravel(), n_layer, n_embed, "pp@1"), grid[1, 3])
    with pytest.raises(ValueError, match="shape"):
        from_state(np.zeros(7), n_layer, n_embed)


def test_check_model_refuses_other_layouts():
    fake = types.SimpleNamespace(version="7", n_embed=64, n_layer=2, state_len=9999)
    with pytest.raises(rwkv_cpp.UnsupportedModelError, match="RWKV-4"):
        check_model(fake)


# -- embeddings of the demo model ----------------------------------------------


def test_embed_text_and_tokens(demo, tokens):
    e = demo.embed(TEXT)
    assert e.dtype == np.float32 and e.shape == (Parts.parse(DEFAULT_PARTS).dim(demo.n_layer, demo.n_embed),)
    assert np.all(np.isfinite(e))
    np.testing.assert_array_equal(e, demo.embed(tokens))
    np.testing.assert_array_equal(e, demo.embed(list(tokens)))
    np.testing.assert_array_equal(e, demo.embed(TEXT.encode("utf-8")))


def test_embed_deterministic(demo):
    first = demo.embed(TEXT, parts="all")
    for _ in range(2):
        np.testing.assert_array_equal(demo.embed(TEXT, parts="all"), first)


@pytest.mark.parametrize("splits", [(1,), (17,), (5, 6, 30), tuple(range(1, 12))])
def test_embed_in_pieces_with_state_carried(demo, tokens, splits):
    """The text fed in one call vs in pieces, the state carried from piece to
    piece (the last piece through embed(state=...)); every part."""
    whole = demo.embed(tokens, parts="all")
    bounds = (0,) + splits
    state = None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        _, state = demo.eval_sequence(tokens[lo:hi], state, logits=False)
    pieces = demo.embed(tokens[bounds[-1]:], parts="all", state=state)
    assert np.abs(pieces - whole).max() <= EMBED_TOL


def test_embed_independent_of_threads(demo, tokens):
    with rwkv_cpp.Model.default(n_threads=2) as two:
        for parts in ("all", DEFAULT_PARTS):
            assert np.abs(two.embed(tokens, parts=parts) - demo.embed(tokens, parts=parts)).max() <= EMBED_TOL


def test_embed_many(demo, tokens):
    texts = [TEXT, "Good morrow.", tokens[:9]]
    many = demo.embed_many(texts, parts="wkv,pp@-1")
    assert many.shape == (3, 2 * demo.n_embed)
    for row, text in zip(many, texts):
        np.testing.assert_array_equal(row, demo.embed(text, parts="wkv,pp@-1"))


def test_embed_empty_text(demo):
    with pytest.raises(rwkv_cpp.InvalidArgumentError, match="empty"):
        demo.embed("")
    with pytest.raises(rwkv_cpp.InvalidArgumentError):
        demo.embed([])


# -- statistics and normalisation maths ----------------------------------------


def test_running_stats_match_numpy():
    """Uneven batches of channels with a large mean and a small spread."""
    rng = np.random.default_rng(0)
    data = rng.normal(1e4, 1e-2, size=(301, 5)) + rng.normal(0, 3, size=5)
    running = RunningStats(5)
    for lo, hi in [(0, 1), (1, 2), (2, 100), (100, 100), (100, 301)]:
        running.update(data[lo:hi])
    assert running.count == 301
    np.testing.assert_allclose(running.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(running.std, data.std(axis=0), rtol=1e-9)


def test_normalisation_scale_guard():
    """sqrt(std^2 + floor^2), floor = EPS_REL * median std of the block."""
    std = np.array([1.0, 2.0, 0.0, 4.0,  # block 0: median 1.5
                    0.0, 0.0, 0.0, 0.0])  # block 1: constant
    scale = normalisation_scale(std, 4)
    floor = EPS_REL * 1.5
    np.testing.assert_allclose(scale[:4], np.sqrt(std[:4] ** 2 + floor ** 2), rtol=1e-15)
    assert scale[2] == pytest.approx(floor)  # a constant channel is scaled by the floor, not by 0
    assert abs(scale[3] / 4.0 - 1) < 1e-5  # ordinary channels: 1/std to 0.001%
    np.testing.assert_array_equal(scale[4:], 0)


def test_normalise_maths(demo):
    """Statistics made from samples z-score those samples to mean 0 and
    std std / sqrt(std^2 + floor^2); a constant block is zeroed."""
    rng = np.random.default_rng(1)
    parts = Parts.parse("pp@0")
    n = demo.n_embed
    samples = rng.normal(5.0, rng.uniform(0.5, 3.0, n), size=(200, n))
    samples[:, 7] = 3.0  # a constant channel
    running = RunningStats(n)
    running.update(samples)
    stats = EmbedStats.from_running(demo, parts, running)
    z = stats.normalise(samples, parts)
    scale = np.sqrt(samples.std(axis=0) ** 2 + (EPS_REL * np.median(samples.std(axis=0))) ** 2)
    np.testing.assert_allclose(z, (samples - samples.mean(axis=0)) / scale, atol=1e-5)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    assert np.all(z[:, 7] == 0)
    zeroed = EmbedStats.from_running(demo, parts, _constant(n))
    assert np.all(zeroed.normalise(samples, parts) == 0)


def _constant(n):
    running = RunningStats(n)
    running.update(np.ones((3, n)))
    return running


def test_stats_round_trip(demo, tokens, small_stats, tmp_path):
    path = tmp_path / "demo.stats"
    small_stats.save(path)
    loaded = EmbedStats.load(path, demo)
    np.testing.assert_array_equal(loaded.mean, small_stats.mean)
    np.testing.assert_array_equal(loaded.std, small_stats.std)
    assert loaded.parts == small_stats.parts and loaded.model_info == small_stats.model_info
    assert loaded.n_passages == 12 and loaded.passage_tokens == 16
    # embed with the file (a path) = normalising the raw embedding by hand
    for parts in (DEFAULT_PARTS, "att_xx,pp@-1"):
        raw = demo.embed(tokens, parts=parts)
        np.testing.assert_array_equal(demo.embed(tokens, parts=parts, stats=str(path)),
                                      loaded.normalise(raw, parts))
    assert np.abs(demo.embed(tokens, stats=loaded)).max() < 1e3
    texts = [TEXT, tokens[:7]]
    np.testing.assert_array_equal(demo.embed_many(texts, stats=loaded),
                                  np.stack([demo.embed(t, stats=loaded) for t in texts]))


def test_stats_cover_only_their_parts(demo, tokens):
    passages = [tokens[:10], tokens[5:20], tokens[20:33]]
    stats = embed_stats.collect(demo, passages, "wkv@-2:")
    demo.embed(tokens, parts="wkv@-1", stats=stats)
    with pytest.raises(EmbedStatsError, match="cover parts"):
        demo.embed(tokens, parts="wkv@0", stats=stats)
    with pytest.raises(EmbedStatsError, match="pp of layer 6"):
        demo.embed(tokens, parts="pp@-2:", stats=stats)


def test_stats_model_mismatch(demo, small_stats, zoo, tmp_path):
    """Statistics of one model refused by a model of another shape, and by
    a file of the same shape with other contents (FP32 vs FP16 of the same
    checkpoint) unless the fingerprint check is waived."""
    path = tmp_path / "demo.stats"
    small_stats.save(path)
    with rwkv_cpp.Model(str(zoo.safetensors_gguf(SMALLEST, "FP32")), n_threads=1) as other:
        with pytest.raises(EmbedStatsError, match="another model.*n_embed 192 \\(this model: 64\\)"):
            EmbedStats.load(path, other)
        with pytest.raises(EmbedStatsError, match="another model"):
            other.embed([1, 2, 3], stats=str(path))
        other_stats = embed_stats.collect(other, [[1, 2, 3], [4, 5, 6, 7]], "wkv")
    with rwkv_cpp.Model(str(zoo.safetensors_gguf(SMALLEST, "FP16")), n_threads=1) as fp16:
        with pytest.raises(EmbedStatsError, match="same shape"):
            fp16.embed([1, 2, 3], stats=other_stats)
        other_stats.check(fp16, check_fingerprint=False)
        fp16.embed([1, 2, 3], stats=other_stats)


def test_stats_file_malformed(small_stats, tmp_path):
    good = tmp_path / "good.stats"
    small_stats.save(good)
    data = good.read_bytes()
    header_size = struct.unpack_from("<I", data, 12)[0]
    cases = {
        "magic": b"NOTSTATS" + data[8:],
        "format": data[:8] + struct.pack("<I", 99) + data[12:],
        "header size": data[:12] + struct.pack("<I", 1 << 30) + data[16:],
        "truncated": data[:-4],
        "header json": data[:16] + b"{" * header_size + data[16 + header_size:],
    }
    for what, blob in cases.items():
        path = tmp_path / (what.replace(" ", "_") + ".stats")
        path.write_bytes(blob)
        with pytest.raises(EmbedStatsError):
            EmbedStats.load(path)


# -- the command line -----------------------------------------------------------


def test_embed_stats_cli(demo, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 4, encoding="utf-8")
    out = tmp_path / "cli.stats"
    rc = embed_stats.main([demo.path, str(corpus), "-o", str(out), "--passage-tokens", "16",
                           "--max-passages", "6", "--parts", "wkv,pp", "--threads", "1", "-q"])
    assert rc == 0
    assert "6 passages of 16 tokens" in capsys.readouterr().out
    stats = EmbedStats.load(out, demo)
    assert stats.parts.names == ("pp", "wkv") and stats.sources == ["corpus.txt"]
    assert stats.mean.size == 2 * demo.n_layer * demo.n_embed
    rc = embed_stats.main([demo.path, str(corpus), "-o", str(tmp_path / "x.stats"), "--passage-tokens", "100000",
                           "-q"])
    assert rc == 1 and "no passage" in capsys.readouterr().err


def test_corpus_passages(demo, tmp_path):
    from rwkv_cpp.tokenizers import for_model

    files = []
    for i in range(2):
        files.append(tmp_path / ("f%d.txt" % i))
        files[-1].write_text(TEXT * (i + 1), encoding="utf-8")
    every = embed_stats.corpus_passages(for_model(demo), files, 8)
    n_tokens = [len(for_model(demo).encode(TEXT * (i + 1))) for i in range(2)]
    assert len(every) == sum(n // 8 for n in n_tokens)
    assert all(len(p[2]) == 8 for p in every)
    drawn = embed_stats.corpus_passages(for_model(demo), files, 8, max_passages=5, seed=3)
    again = embed_stats.corpus_passages(for_model(demo), files, 8, 5, seed=3)
    assert len(drawn) == 5 and [(p, s) for p, s, _ in drawn] == [(p, s) for p, s, _ in again]
    assert {(Path(p), s) for p, s, _ in drawn} <= {(Path(p), s) for p, s, _ in every}
    starts = {(Path(p), s): t for p, s, t in every}
    for p, s, t in drawn:
        np.testing.assert_array_equal(t, starts[(Path(p), s)])
