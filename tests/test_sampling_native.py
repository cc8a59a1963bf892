"""The C steps of sampling (``rwkv_sample_rows``: top-p, top-k, the draw)
against the numpy reference of rwkv_cpp.sampling (``candidates``,
``top_p_cutoff``, ``draw``): the same token, exactly, over random rows of
every shape of distribution; the fast top-p cut-off against the sorted one,
rows built to fall on the rounding boundary included; bad rows refused."""

import math

import numpy as np
import pytest

from _testing_lib import lib as testing_lib, ptr
from rwkv_cpp._lib import ffi, lib
from rwkv_cpp.errors import InvalidArgumentError
from rwkv_cpp.sampling import Sampler, SamplingParams, candidates, draw, top_p_cutoff

VOCABS = (2, 7, 300, 5000, 65536)


def random_logits(rng, n_vocab):
    """Flat, peaked, coarse (exact ties), with huge values, or spread so wide
    that most probabilities underflow to 0."""
    kind = int(rng.integers(5))
    x = rng.standard_normal(n_vocab) * [0.1, 1.0, 4.0, 1.0, 300.0][kind]
    if kind == 2:
        x = np.round(x)
    elif kind == 3:
        x[rng.integers(n_vocab, size=3)] = 30.0
    return x.astype(np.float32)


def reference_token(params, n_vocab, logits):
    """The token of the numpy reference, with a generator of the same seed."""
    adjusted = Sampler(params, n_vocab).penalised(logits)
    if params.temperature == 0:
        return int(np.argmax(adjusted))
    ids, weights = candidates(adjusted, params.temperature, params.top_p, params.top_k)
    return int(ids[draw(weights, np.random.default_rng(params.seed))])


@pytest.mark.parametrize("n_vocab", VOCABS)
def test_native_draw_equals_the_reference(n_vocab):
    rng = np.random.default_rng(77 + n_vocab)
    for trial in range(150 if n_vocab < 65536 else 25):
        params = SamplingParams(
            temperature=float(rng.choice([0.0, 0.05, 0.7, 1.0, 1.0, 2.5])),
            top_p=float(rng.choice([0.0, 0.5, 0.85, 0.999999, 1.0, rng.uniform()])),
            top_k=int(rng.choice([0, 0, 1, 3, n_vocab - 1, n_vocab + 2, rng.integers(1, n_vocab + 1)])),
            token_ban=[int(t) for t in rng.choice(n_vocab, size=int(rng.integers(0, n_vocab // 2 + 1)),
                                                    replace=False)][: n_vocab - 1],
            seed=int(rng.integers(2**31)))
        logits = random_logits(rng, n_vocab)
        got = Sampler(params, n_vocab).sample(logits)
        assert got == reference_token(params, n_vocab, logits), (trial, params)


def boundary_top_ps(probs):
    """top_p values whose target top_p * S falls on, or next to, a partial
    sum of the sorted probabilities: where rounding decides the cut-off."""
    total = float(np.cumsum(probs)[-1])
    sums = np.cumsum(np.sort(probs)[::-1])
    out = []
    for j in (0, 1, sums.size // 3, sums.size // 2, sums.size - 2):
        if 0 <= j < sums.size and 0 < sums[j] / total <= 1:
            p = sums[j] / total
            out += [p, math.nextafter(p, 0.0), math.nextafter(p, 2.0)]
    return [p for p in out if 0 <= p <= 1]


def cutoff(probs, top_p, sorted_):
    value = testing_lib.rwkv_testing_top_p_cutoff(ptr(probs, "double *"), probs.size, top_p, int(sorted_))
    assert not math.isnan(value)
    return value


@pytest.mark.parametrize("n", [1, 2, 10, 1000, 50277])
def test_fast_top_p_cutoff_equals_the_sorted_one(n):
    rng = np.random.default_rng(n)
    rows = [np.exp(rng.standard_normal(n) * s) for s in (0.05, 1.0, 5.0, 40.0)]
    rows.append(np.full(n, 0.25))                                  # all tied
    rows.append(np.exp(np.round(rng.standard_normal(n) * 3)))      # many ties
    zeros = np.exp(rng.standard_normal(n))
    zeros[rng.random(n) < 0.5] = 0.0                               # banned tokens
    zeros[0] = 1.0
    rows.append(zeros)
    rows.append(np.exp(-rng.uniform(0, 745, n)))                   # subnormal values
    cases = 0
    for probs in rows:
        probs = np.ascontiguousarray(probs, dtype=np.float64)
        for top_p in [0.0, 1e-300, 0.3, 0.9, 0.999999, 1.0, float(rng.uniform())] + boundary_top_ps(probs):
            want = top_p_cutoff(probs, top_p)
            assert cutoff(probs, top_p, True) == want, (top_p,)
            assert cutoff(probs, top_p, False) == want, (top_p,)
            cases += 1
    assert cases > 60


def sample_rows(rows, n_vocab):
    """rwkv_sample_rows on a list of dicts; the tokens, or the error."""
    c_rows = ffi.new("struct rwkv_sample_row[]", max(len(rows), 1))
    keep = []
    for c, row in zip(c_rows, rows):
        for name in ("probs", "weights"):
            if row.get(name) is not None:
                array = np.ascontiguousarray(row[name], dtype=np.float64)
                keep.append(array)
                setattr(c, name, ffi.cast("double *", ffi.from_buffer(array)))
        c.top_p, c.top_k, c.u = row.get("top_p", 1.0), row.get("top_k", 0), row.get("u", 0.5)
    tokens = np.full(max(len(rows), 1), -7, dtype=np.int32)
    errbuf = ffi.new("char[]", 512)
    status = lib.rwkv_sample_rows(c_rows, len(rows), n_vocab, ffi.cast("int32_t *", ffi.from_buffer(tokens)),
                                  errbuf, 512)
    return status, ffi.string(errbuf).decode(), tokens


@pytest.mark.parametrize("row, message", [
    (dict(probs=None), "probs is NULL"),
    (dict(probs=[1.0, np.nan, 1.0]), r"probs\[1\] = nan"),
    (dict(probs=[1.0, -0.5, 1.0]), r"probs\[1\] = -0.5"),
    (dict(probs=[1.0, np.inf, 1.0]), r"probs\[1\] = inf"),
    (dict(probs=[0.0, 0.0, 0.0]), "weights sum to 0"),
    (dict(probs=[1.0, 1.0, 1.0], weights=[1.0, np.nan, 1.0]), r"weights\[1\] = nan"),
    (dict(probs=[1.0, 1.0, 1.0], weights=[0.0, 0.0, 0.0]), "weights sum to 0"),
    (dict(probs=[1.0, 1.0, 1.0], top_p=1.5), "top_p must be in"),
    (dict(probs=[1.0, 1.0, 1.0], top_p=np.nan), "top_p must be in"),
    (dict(probs=[1.0, 1.0, 1.0], top_k=-1), "top_k must be >= 0"),
    (dict(probs=[1.0, 1.0, 1.0], u=1.0), r"u must be in \[0, 1\)"),
    (dict(probs=[1.0, 1.0, 1.0], u=-0.1), r"u must be in \[0, 1\)"),
])
def test_bad_rows_are_refused_and_nothing_is_written(row, message):
    good = dict(probs=[1.0, 2.0, 3.0])
    status, error, tokens = sample_rows([good, row], 3)
    assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert "row 1" in error and __import__("re").search(message, error), error
    assert tokens.tolist() == [-7, -7]


def test_rows_and_sizes():
    status, error, tokens = sample_rows([dict(probs=[0.0, 1.0, 0.0], u=0.99)], 3)
    assert status == lib.RWKV_STATUS_OK and tokens[0] == 1
    assert sample_rows([], 3)[0] == lib.RWKV_STATUS_OK  # no rows: nothing to do
    status, error, _ = sample_rows([dict(probs=[1.0])], 0)
    assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT and "n_vocab" in error
    null_rows = lib.rwkv_sample_rows(ffi.NULL, 1, 3, ffi.new("int32_t[]", 1), ffi.NULL, 0)
    assert null_rows == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT


def test_a_non_finite_logit_is_a_clear_error():
    sampler = Sampler(SamplingParams(seed=1), 4)
    with pytest.raises(InvalidArgumentError, match="must be finite"):
        sampler.sample(np.array([0.0, np.nan, 1.0, 2.0]))
