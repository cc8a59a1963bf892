"""Sampling: the distribution against a direct reference computation (and
the official ``PIPELINE.sample_logits``), seeded statistical tests of the
draws, and the penalties against the official ``PIPELINE.generate`` loop."""

import numpy as np
import pytest

from rwkv_cpp.sampling import (PENALTY_EXEMPT_TEXT, Sampler, SamplingParams, candidates, draw,
                               truncated_probabilities)

SETTINGS = [  # (temperature, top_p, top_k)
    (1.0, 0.85, 0),
    (1.0, 0.0, 0),
    (0.7, 0.5, 0),
    (1.5, 0.9, 5),
    (0.3, 0.99, 0),
    (1.0, 0.7, 3),
    (2.0, 0.3, 1),
    (0.05, 0.95, 0),
]


def reference_probabilities(logits, temperature, top_p, top_k):
    """The official steps written out directly, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    sorted_ids = np.argsort(probs)
    sorted_probs = probs[sorted_ids][::-1]
    cutoff = sorted_probs[np.argmax(np.cumsum(sorted_probs) >= top_p)]
    probs[probs < cutoff] = 0
    if 0 < top_k < len(probs):
        probs[sorted_ids[:-top_k]] = 0
    probs = probs ** (1.0 / temperature)
    return probs / probs.sum()


def random_logits(rng, n, scale):
    return (rng.standard_normal(n) * scale).astype(np.float32)


@pytest.mark.parametrize("temperature, top_p, top_k", SETTINGS)
def test_distribution_equals_reference(temperature, top_p, top_k):
    rng = np.random.default_rng(11)
    for n, scale in [(10, 1.0), (1000, 3.0), (5000, 0.3), (65536, 2.0)]:
        logits = random_logits(rng, n, scale)
        ours = truncated_probabilities(logits, temperature, top_p, top_k)
        ref = reference_probabilities(logits, temperature, top_p, top_k)
        np.testing.assert_array_equal(ours > 0, ref > 0)  # the same truncation set
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-300)


def test_top_p_keeps_ties_with_the_cutoff_token():
    logits = np.log(np.array([0.4, 0.2, 0.2, 0.1, 0.1]))
    probs = truncated_probabilities(logits, 1.0, 0.5, 0)
    np.testing.assert_allclose(probs, [0.5, 0.25, 0.25, 0, 0])
    probs = truncated_probabilities(logits, 1.0, 0.0, 0)  # top_p 0: the best only
    np.testing.assert_allclose(probs, [1, 0, 0, 0, 0])


def test_top_p_one_keeps_everything():
    logits = np.random.default_rng(3).standard_normal(50000).astype(np.float32)
    assert np.all(truncated_probabilities(logits, 1.0, 1.0, 0) > 0)


def test_small_temperature_does_not_underflow():
    logits = np.array([0.0, -1.0, -2.0, -900.0])
    probs = truncated_probabilities(logits, 0.001, 1.0, 0)
    assert np.isfinite(probs).all() and probs[0] == pytest.approx(1.0)


def test_agrees_with_official_sample_logits(monkeypatch):
    """The official function's own distribution: np.random.choice is patched
    to record the ``p`` it is given."""
    torch = pytest.importorskip("torch", reason="torch is needed by the official package")
    utils = pytest.importorskip("rwkv.utils", reason="the official package rwkv==0.8.32 is not installed")
    seen = []

    def choice(a, p):
        seen.append(np.array(p, dtype=np.float64))
        return 0

    monkeypatch.setattr(utils.np.random, "choice", choice)
    rng = np.random.default_rng(12)
    for temperature, top_p, top_k in SETTINGS[:6]:
        logits = random_logits(rng, 3000, 2.0)
        utils.PIPELINE.sample_logits(None, torch.from_numpy(logits), temperature, top_p, top_k)
        ours = truncated_probabilities(logits, temperature, top_p, top_k)
        np.testing.assert_array_equal(seen[-1] > 0, ours > 0)
        np.testing.assert_allclose(seen[-1], ours, rtol=1e-4, atol=1e-12)  # official: float32


@pytest.mark.parametrize("temperature, top_p, top_k", [(1.0, 0.9, 0), (0.5, 1.0, 0), (1.3, 0.8, 4)])
def test_draws_follow_the_distribution(temperature, top_p, top_k):
    """Frequencies of 20000 seeded draws within 5 standard errors of the
    reference probabilities; tokens outside the truncation set never drawn."""
    logits = np.log(np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05]))
    expected = reference_probabilities(logits, temperature, top_p, top_k)
    sampler = Sampler(SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=2024),
                      logits.size)
    n = 20000
    counts = np.bincount([sampler.sample(logits) for _ in range(n)], minlength=logits.size)
    assert np.all(counts[expected == 0] == 0)
    freq = counts / n
    tolerance = 5 * np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= tolerance + 1e-12), (freq, expected)


def test_seeded_draws_repeat():
    logits = random_logits(np.random.default_rng(1), 500, 1.0)
    runs = []
    for _ in range(2):
        sampler = Sampler(SamplingParams(seed=77, alpha_presence=0, alpha_frequency=0), 500)
        runs.append([sampler.sample(logits) for _ in range(50)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 5


def test_draw_picks_only_positive_weights():
    rng = np.random.default_rng(0)
    weights = np.array([0.0, 0.0, 1.0, 0.0, 3.0, 0.0])
    picks = {draw(weights, rng) for _ in range(2000)}
    assert picks == {2, 4}


def test_temperature_zero_is_greedy_after_penalties():
    logits = np.array([1.0, 3.0, 2.9, 0.0])
    sampler = Sampler(SamplingParams(temperature=0, alpha_presence=0.5, alpha_frequency=0), 4)
    assert sampler.sample(logits) == 1
    sampler.accept(1, "x")
    assert sampler.sample(logits) == 2  # 3.0 - 0.5 < 2.9


def test_bans():
    logits = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=1.0, token_ban=[0], seed=1), 5, banned_from=3)
    drawn = {sampler.sample(logits) for _ in range(500)}
    assert drawn == {1, 2}
    everything = Sampler(SamplingParams(token_ban=[0, 1]), 2)
    with pytest.raises(ValueError, match="banned"):
        everything.sample(np.array([1.0, 2.0]))


def test_candidates_top_k_ties_keep_exactly_k():
    ids, weights = candidates(np.zeros(10), 1.0, 1.0, 3)
    assert ids.size == 3 and np.all(weights == 1.0)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-1), dict(temperature=float("nan")), dict(top_p=1.5), dict(top_p=-0.1),
    dict(top_k=-1), dict(top_k=1.5), dict(alpha_decay=2), dict(stop=[""]), dict(token_ban=[-1]),
    dict(alpha_presence=float("inf")),
])
def test_invalid_settings_are_clear_errors(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_logits_of_the_wrong_size():
    with pytest.raises(ValueError, match="logits have 3 values"):
        Sampler(SamplingParams(), 4).sample(np.zeros(3))


# ---------------------------------------------------------------------------
# penalties against the official generate loop
# ---------------------------------------------------------------------------

#: token id -> text of the fake tokenizer: exempt (space, digits, empty,
#: digit runs), not exempt (letters, a space + letter, partial UTF-8)
TOKEN_TEXT = {0: "a", 1: " ", 2: "7", 3: "12", 4: "", 5: "b", 6: " x", 7: "\ufffd", 8: "\t", 9: "c"}


class FakeVocab:
    def encode(self, text):
        return [9, 9]

    def decode(self, ids):
        return "".join(TOKEN_TEXT[i] for i in ids)


class FakeModel:
    """Returns the next logits of a fixed list at each forward call."""

    def __init__(self, torch, logits):
        self.torch = torch
        self.logits = list(logits)

    def forward(self, tokens, state):
        return self.torch.from_numpy(self.logits.pop(0).copy()), state


def official_penalised_logits(logits_steps, forced, params):
    """The logits the official PIPELINE.generate hands to sample_logits at
    each step, when the sampled tokens are ``forced``."""
    torch = pytest.importorskip("torch", reason="torch is needed by the official package")
    utils = pytest.importorskip("rwkv.utils", reason="the official package rwkv==0.8.32 is not installed")
    pipeline = utils.PIPELINE.__new__(utils.PIPELINE)
    pipeline.model = FakeModel(torch, logits_steps)
    pipeline.tokenizer = FakeVocab()
    seen = []

    def sample_logits(out, temperature, top_p, top_k):
        seen.append(out.double().numpy().copy())
        return forced[len(seen) - 1]

    pipeline.sample_logits = sample_logits
    args = utils.PIPELINE_ARGS(alpha_frequency=params.alpha_frequency, alpha_presence=params.alpha_presence,
                               alpha_decay=params.alpha_decay, token_ban=list(params.token_ban),
                               token_stop=list(params.token_stop))
    pipeline.generate("ctx", token_count=len(forced), args=args)
    return seen


@pytest.mark.parametrize("decay, ban", [(0.996, []), (0.5, [3]), (1.0, [0, 5])])
def test_penalties_equal_the_official_loop(decay, ban):
    rng = np.random.default_rng(21)
    n_steps = 40
    logits_steps = [random_logits(rng, len(TOKEN_TEXT), 1.0) for _ in range(n_steps)]
    forced = rng.integers(0, len(TOKEN_TEXT), size=n_steps).tolist()
    params = SamplingParams(alpha_frequency=0.3, alpha_presence=0.25, alpha_decay=decay, token_ban=ban)
    official = official_penalised_logits(logits_steps, forced, params)
    sampler = Sampler(params, len(TOKEN_TEXT))
    for step, token in enumerate(forced):
        ours = sampler.penalised(logits_steps[step])
        np.testing.assert_allclose(ours, official[step], rtol=1e-6, atol=1e-6)
        sampler.accept(token, TOKEN_TEXT[token])


def test_exemption_rule():
    for text in [" ", "7", "12", "", "\t", " \t0"]:
        assert text in PENALTY_EXEMPT_TEXT
    sampler = Sampler(SamplingParams(alpha_presence=1.0, alpha_frequency=10.0, alpha_decay=1.0), 3)
    sampler.accept(0, " ")
    sampler.accept(1, "word")
    out = sampler.penalised(np.zeros(3))
    assert out.tolist() == [-1.0, -11.0, 0.0]  # exempt: still present, no count
    sampler.reset()
    assert sampler.penalised(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
