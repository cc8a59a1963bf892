"""Sampling of the next token from logits, with the semantics of the
official package's ``PIPELINE_ARGS`` / ``PIPELINE.sample_logits``
(``rwkv.utils``), vectorised with numpy.

For one step, given the model's logits:

1. penalties: banned tokens (``token_ban``) get logit -inf; every token that
   occurred in the output so far gets ``alpha_presence + count *
   alpha_frequency`` subtracted, where ``count`` decays by ``alpha_decay``
   per generated token (see ``Sampler.accept``);
2. ``probs = softmax(logits)``;
3. top-p: the tokens whose probability is below that of the token at which
   the cumulative probability (in decreasing order) first reaches ``top_p``
   are dropped (so ties with that token are kept);
4. top-k (``top_k > 0``): only the ``top_k`` most probable remain;
5. temperature: ``probs ** (1 / temperature)``, renormalised; computed as
   ``exp((logit - max) / temperature)`` on the remaining tokens, the same
   distribution without underflow for small temperatures;
6. a draw from the numpy ``Generator`` (seedable).

``temperature == 0`` is greedy: the token of the largest penalised logit.

Deliberate differences from the official code: ``top_p >= 1`` keeps every
token (the official cut-off can fall to the single best token when the
float32 cumulative sum ends just below 1.0), and temperature-0 ties go to the
lowest id instead of a random one of the tied tokens.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

#: a generated token whose text is a substring of this adds no count (but
#: is still "present"), as in the official pipeline: spaces, tabs, digits.
PENALTY_EXEMPT_TEXT = " \t0123456789"


@dataclass
class SamplingParams:
    """Sampling settings; the defaults are those of ``PIPELINE_ARGS``.

    Attributes:
        temperature: >= 0; 0 means greedy.
        top_p: nucleus mass in [0, 1]; 0 keeps only the most probable token(s).
        top_k: keep the k most probable tokens; 0 = no limit.
        alpha_frequency, alpha_presence: penalties for generated tokens.
        alpha_decay: per-token decay of the frequency counts, in [0, 1].
        token_ban: ids never generated.
        token_stop: ids that end generation when drawn (not emitted).
        stop: strings that end generation; the text is cut before them.
        seed: seed of the random generator (None: fresh entropy).
    """

    temperature: float = 1.0
    top_p: float = 0.85
    top_k: int = 0
    alpha_frequency: float = 0.2
    alpha_presence: float = 0.2
    alpha_decay: float = 0.996
    token_ban: Sequence[int] = ()
    token_stop: Sequence[int] = ()
    stop: Sequence[str] = ()
    seed: Optional[int] = None

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises ValueError naming the first invalid setting."""
        _require(np.isfinite(self.temperature) and self.temperature >= 0,
                 "temperature must be >= 0, got %r" % (self.temperature,))
        _require(np.isfinite(self.top_p) and 0 <= self.top_p <= 1,
                 "top_p must be in [0, 1], got %r" % (self.top_p,))
        _require(isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0,
                 "top_k must be an int >= 0, got %r" % (self.top_k,))
        for name in ("alpha_frequency", "alpha_presence"):
            _require(np.isfinite(getattr(self, name)), "%s must be finite" % name)
        _require(0 <= self.alpha_decay <= 1, "alpha_decay must be in [0, 1], got %r" % (self.alpha_decay,))
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        _require(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty str")
        for name in ("token_ban", "token_stop"):
            ids = getattr(self, name)
            _require(all(isinstance(t, (int, np.integer)) and t >= 0 for t in ids),
                     "%s must be token ids (ints >= 0)" % name)


def _require(condition, message):
    if not condition:
        raise ValueError(message)


def truncated_probabilities(logits, temperature=1.0, top_p=0.85, top_k=0):
    """The distribution a token is drawn from (float64 over the whole
    vocabulary, sums to 1).  ``logits`` are the penalised logits; see the
    module docstring for the steps.  ``temperature`` must be > 0 here (0 is
    greedy, see ``Sampler``)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    ids, weights = candidates(logits, temperature, top_p, top_k)
    probs = np.zeros(logits.size, dtype=np.float64)
    probs[ids] = weights / weights.sum()
    return probs


def candidates(logits, temperature, top_p, top_k):
    """``(ids, weights)``: the tokens that survive top-p and top-k, and
    their unnormalised tempered probabilities ``exp((logit - max) / T)``."""
    shifted = logits - logits.max()
    probs = np.exp(shifted)
    probs /= probs.sum()
    if top_p < 1:
        ids = np.flatnonzero(probs >= top_p_cutoff(probs, top_p))
    else:
        ids = np.flatnonzero(np.isfinite(shifted))
    if 0 < top_k < ids.size:
        ids = ids[np.argpartition(-probs[ids], top_k - 1)[:top_k]]
    return ids, np.exp(shifted[ids] / temperature)


#: how many of the most probable tokens are sorted first when looking for
#: the top-p cut-off (all of them if these do not reach top_p).
_TOP_P_FIRST_TRY = 512


def top_p_cutoff(probs, top_p):
    """The probability of the token at which the cumulative probability, in
    decreasing order, first reaches ``top_p`` (0 if it never does)."""
    n = probs.size
    m = min(n, _TOP_P_FIRST_TRY)
    while True:
        # the m largest, in decreasing order: the same prefix as a full sort,
        # so the same cumulative sums
        top = np.sort(np.partition(probs, n - m)[n - m:] if m < n else probs)[::-1]
        reached = np.cumsum(top) >= top_p
        if reached.any():
            return float(top[np.argmax(reached)])
        if m == n:
            return 0.0
        m = n


class Sampler:
    """Draws tokens with penalties that follow the generated tokens.

    ``sample(logits)`` picks a token; ``accept(token, text)`` records a
    generated token (``text``: its decoded text, for the exemption rule).
    """

    def __init__(self, params: SamplingParams, n_vocab: int, *, rng=None, banned_from: Optional[int] = None):
        """``rng``: a numpy Generator (default: one seeded with
        ``params.seed``); ``banned_from``: ids >= this are banned too (ids a
        tokenizer cannot decode)."""
        params.validate()
        self.params = params
        self.n_vocab = int(n_vocab)
        self.rng = rng if rng is not None else np.random.default_rng(params.seed)
        self._banned = np.zeros(self.n_vocab, dtype=bool)
        self._banned[[t for t in params.token_ban if t < self.n_vocab]] = True
        if banned_from is not None:
            self._banned[banned_from:] = True
        self._stop = frozenset(int(t) for t in params.token_stop)
        self.reset()

    def reset(self):
        """Forgets the generated tokens (the penalties start afresh)."""
        self.present = np.zeros(self.n_vocab, dtype=bool)
        self.counts = np.zeros(self.n_vocab, dtype=np.float64)

    def is_stop(self, token):
        return token in self._stop

    def penalised(self, logits):
        """A float64 copy of ``logits`` with bans and penalties applied."""
        p = self.params
        out = np.array(logits, dtype=np.float64).reshape(-1)
        if out.size != self.n_vocab:
            raise ValueError("logits have %d values, the sampler expects %d" % (out.size, self.n_vocab))
        out[self.present] -= p.alpha_presence + self.counts[self.present] * p.alpha_frequency
        out[self._banned] = -np.inf
        return out

    def sample(self, logits):
        """The next token id."""
        adjusted = self.penalised(logits)
        if not np.isfinite(adjusted).any():
            raise ValueError("every token is banned or the logits are not finite")
        if self.params.temperature == 0:
            return int(np.argmax(adjusted))
        ids, weights = candidates(adjusted, self.params.temperature, self.params.top_p, self.params.top_k)
        return int(ids[draw(weights, self.rng)])

    def accept(self, token, text):
        """Records a generated token: every count decays, then the token
        becomes present and its count grows by 1 (0 if ``text`` is a
        substring of ``PENALTY_EXEMPT_TEXT``: spaces, tabs, digits)."""
        self.counts *= self.params.alpha_decay
        self.present[token] = True
        if text not in PENALTY_EXEMPT_TEXT:
            self.counts[token] += 1.0


def draw(weights, rng):
    """An index drawn with probability proportional to ``weights`` (>= 0,
    not all 0), by inverting the cumulative sum."""
    cdf = np.cumsum(weights)
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    # rounding can put the point at the very end: take the last positive weight
    return min(index, int(np.flatnonzero(weights)[-1]))
