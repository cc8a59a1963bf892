"""Sampling a batch of rows at once (``sample_batch``) against the one-row
``Sampler.sample``: the same token for every row, over many random cases
(temperature 0, top_p 0 and 1, top_k, tied logits, banned tokens,
penalties after a random history), and the same use of each row's random
generator over several steps."""

import numpy as np
import pytest

from rwkv_cpp.sampling import (PENALTY_EXEMPT_TEXT, Sampler, SamplingParams, penalise_rows, sample_batch,
                               sample_rows, top_k_ids)

VOCABS = (2, 7, 256, 1000, 65536)


def random_params(rng, n_vocab, seed):
    """Settings covering the edge values with high probability."""
    temperature = rng.choice([0.0, 0.0, 0.05, 0.7, 1.0, 1.0, 2.5])
    top_p = rng.choice([0.0, 1.0, 0.85, float(rng.uniform(0, 1)), 0.999999])
    top_k = int(rng.choice([0, 0, 1, 2, 5, n_vocab - 1, n_vocab, n_vocab + 3, int(rng.integers(1, n_vocab + 1))]))
    ban = rng.choice(n_vocab, size=int(rng.integers(0, min(n_vocab - 1, 40) + 1)), replace=False)
    return SamplingParams(temperature=float(temperature), top_p=float(top_p), top_k=max(top_k, 0),
                          alpha_frequency=float(rng.choice([0.0, 0.2, 1.5])),
                          alpha_presence=float(rng.choice([0.0, 0.2, -0.3])),
                          alpha_decay=float(rng.choice([0.996, 1.0, 0.5])),
                          token_ban=[int(t) for t in ban], seed=seed)


def random_logits(rng, n_vocab):
    """Continuous, or coarse (many exact ties), or with a few huge values."""
    kind = rng.integers(3)
    x = rng.standard_normal(n_vocab) * rng.choice([0.1, 1.0, 4.0])
    if kind == 1:
        x = np.round(x * 2) / 2
    elif kind == 2:
        x[rng.integers(n_vocab, size=3)] = 30.0
    return x.astype(np.float32)


def twin_samplers(params, n_vocab, rng, banned_from=None):
    """Two samplers of the same settings and seed, given the same random history."""
    pair = [Sampler(params, n_vocab, banned_from=banned_from) for _ in range(2)]
    for _ in range(int(rng.integers(0, 30))):
        token = int(rng.integers(n_vocab))
        text = str(rng.choice(["a", "ab", " ", "7", "\t", "é", ""]))
        for sampler in pair:
            sampler.accept(token, text)
    return pair


@pytest.mark.parametrize("n_vocab", VOCABS)
def test_every_row_equals_the_one_row_sampler(n_vocab):
    rng = np.random.default_rng(1000 + n_vocab)
    cases = 0
    for trial in range(40 if n_vocab < 65536 else 6):
        n = int(rng.integers(1, 9))
        singles, batch = [], []
        for i in range(n):
            params = random_params(rng, n_vocab, seed=int(rng.integers(2**31)))
            banned_from = int(rng.integers(1, n_vocab + 1)) if rng.random() < 0.2 else None
            if banned_from is not None and banned_from <= max(params.token_ban, default=-1):
                banned_from = None
            if len(set(params.token_ban)) >= n_vocab - (n_vocab - banned_from if banned_from else 0):
                banned_from = None
            one, other = twin_samplers(params, n_vocab, rng, banned_from)
            singles.append(one)
            batch.append(other)
        for step in range(3):  # several steps: the generators stay in step
            logits = np.stack([random_logits(rng, n_vocab) for _ in range(n)])
            expected = [s.sample(row) for s, row in zip(singles, logits)]
            got = sample_batch(batch, logits)
            assert got.tolist() == expected, (trial, step, [s.params for s in singles])
            for s_one, s_other, token in zip(singles, batch, expected):
                text = PENALTY_EXEMPT_TEXT[:1] if token % 3 == 0 else "x"
                s_one.accept(token, text)
                s_other.accept(token, text)
            cases += n
    assert cases > 40


def test_ties_and_edges_row_by_row():
    """Hand-made rows: all logits equal, top_p 0 and 1, top_k at and around
    the number of candidates, a single allowed token."""
    n_vocab = 9
    rows = np.array([np.zeros(n_vocab), np.zeros(n_vocab), [1, 1, 1, 0, 0, 0, 2, 2, 0],
                     [1, 1, 1, 0, 0, 0, 2, 2, 0], np.arange(n_vocab), np.zeros(n_vocab)], dtype=np.float32)
    settings = [dict(top_k=3, top_p=1.0), dict(temperature=0), dict(top_k=3, top_p=1.0),
                dict(top_p=0.0), dict(top_k=n_vocab, top_p=1.0), dict(token_ban=list(range(1, n_vocab)))]
    for seed in range(30):
        params = [SamplingParams(seed=seed, **kw) for kw in settings]
        singles = [Sampler(p, n_vocab) for p in params]
        batch = [Sampler(SamplingParams(seed=seed, **kw), n_vocab) for kw in settings]
        expected = [s.sample(r) for s, r in zip(singles, rows)]
        assert sample_batch(batch, rows).tolist() == expected
        assert expected[1] == 0 and expected[5] == 0  # greedy tie -> lowest id; only id 0 allowed
        assert expected[0] in (0, 1, 2)               # top-3 of equal logits: the lowest ids
        assert expected[2] in (0, 1, 6, 7)            # 2, 2 then the lowest-id 1


def test_top_k_ids_keeps_the_lowest_ids_among_ties():
    ids = np.array([3, 5, 8, 9, 12])
    np.testing.assert_array_equal(top_k_ids(ids, np.array([0.1, 0.3, 0.1, 0.3, 0.1]), 3), [3, 5, 9])
    np.testing.assert_array_equal(top_k_ids(ids, np.array([0.2, 0.2, 0.2, 0.2, 0.2]), 2), [3, 5])


def test_penalties_equal_the_one_row_penalties():
    rng = np.random.default_rng(5)
    samplers = []
    for i in range(4):
        sampler = Sampler(SamplingParams(alpha_frequency=0.3 * i, alpha_presence=0.1 * i, token_ban=[i]), 50)
        for _ in range(10):
            sampler.accept(int(rng.integers(50)), "z")
        samplers.append(sampler)
    logits = rng.standard_normal((4, 50)).astype(np.float32)
    present = np.nonzero(np.stack([s.present for s in samplers]))
    out = penalise_rows(logits, present, np.stack([s.counts for s in samplers])[present],
                        np.stack([s._banned for s in samplers]),
                        np.array([s.params.alpha_presence for s in samplers]),
                        np.array([s.params.alpha_frequency for s in samplers]))
    for s, row, got in zip(samplers, logits, out):
        np.testing.assert_array_equal(got, s.penalised(row))


def test_greedy_rows_do_not_use_their_generator():
    logits = np.random.default_rng(0).standard_normal((2, 30)).astype(np.float32)
    rngs = [np.random.default_rng(1), np.random.default_rng(1)]
    sample_rows(logits.astype(np.float64), np.array([0.0, 1.0]), np.array([1.0, 1.0]), np.array([0, 0]), rngs)
    assert rngs[0].random() == np.random.default_rng(1).random()
    assert rngs[1].random() != np.random.default_rng(1).random()


def test_bad_inputs_are_clear_errors():
    samplers = [Sampler(SamplingParams(), 10) for _ in range(2)]
    with pytest.raises(ValueError, match=r"shape \(2, n_vocab\)"):
        sample_batch(samplers, np.zeros((3, 10), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, n_vocab\)"):
        sample_batch(samplers, np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="sampler 0 expects 10"):
        sample_batch(samplers, np.zeros((2, 11), dtype=np.float32))
    banned = [samplers[0], Sampler(SamplingParams(token_ban=list(range(10))), 10)]
    with pytest.raises(ValueError, match="row 1: every token is banned"):
        sample_batch(banned, np.zeros((2, 10), dtype=np.float32))
    assert sample_batch([], np.zeros((0, 10), dtype=np.float32)).shape == (0,)


def test_blocks_of_rows_give_the_same_tokens(monkeypatch):
    """Rows are sampled in cache-sized blocks; any block size, the same tokens."""
    import rwkv_cpp.sampling as sampling

    rng = np.random.default_rng(9)
    logits = rng.standard_normal((7, 300)).astype(np.float32)
    runs = []
    for block_values in (300, 900, 10**6):
        monkeypatch.setattr(sampling, "BLOCK_VALUES", block_values)
        samplers = [Sampler(SamplingParams(seed=i, top_k=i), 300) for i in range(7)]
        runs.append(sample_batch(samplers, logits).tolist())
    assert runs[0] == runs[1] == runs[2]
    monkeypatch.setattr(sampling, "BLOCK_VALUES", 600)
    samplers = [Sampler(SamplingParams(), 300) for _ in range(6)]
    samplers[5] = Sampler(SamplingParams(token_ban=range(300)), 300)
    with pytest.raises(ValueError, match="row 5: every token is banned"):
        sample_batch(samplers, logits[:6])


def test_threads_give_the_same_tokens(monkeypatch):
    """Blocks of rows on several threads: the same tokens, and the error of
    the first dead row."""
    import rwkv_cpp.sampling as sampling

    monkeypatch.setattr(sampling, "BLOCK_VALUES", 600)  # 2 rows a block
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((9, 300)).astype(np.float32)
    runs = []
    for n_threads in (1, 2, 3):
        samplers = [Sampler(SamplingParams(seed=i, top_k=i, temperature=0.5 + 0.1 * i), 300) for i in range(9)]
        runs.append(sample_batch(samplers, logits, n_threads=n_threads).tolist())
    assert runs[0] == runs[1] == runs[2]
    samplers = [Sampler(SamplingParams(token_ban=range(300) if i in (5, 7) else ()), 300) for i in range(9)]
    with pytest.raises(ValueError, match="row 5: every token is banned"):
        sample_batch(samplers, logits, n_threads=3)
