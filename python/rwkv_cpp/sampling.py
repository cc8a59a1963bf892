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
float32 cumulative sum ends just below 1.0), and ties are broken towards the
lowest id instead of at random: at temperature 0 between the best tokens, in
top-k between the tokens tied with the k-th most probable.

``Sampler.sample`` draws one token from one row of logits;
``sample_batch`` (``sample_rows`` underneath) draws one token per row of an
``(n, n_vocab)`` array at once, with per-row settings, penalties and
generators, and gives row by row the very token ``Sampler.sample`` gives: the
same float64 operations in the same order, on masks over the whole vocabulary
instead of index lists (see ``sample_rows``).
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
        ids = top_k_ids(ids, probs[ids], top_k)
    return ids, np.exp(shifted[ids] / temperature)


def top_k_ids(ids, probs, top_k):
    """The ``top_k`` ids of ``ids`` (ascending) with the largest ``probs``;
    among tokens tied with the k-th largest, the lowest ids are kept.  The
    result stays in ascending id order, the order the draw walks (as the
    official ``np.random.choice`` over the whole vocabulary does)."""
    kth = np.partition(probs, probs.size - top_k)[probs.size - top_k]  # the k-th largest
    keep = probs > kth
    keep[np.flatnonzero(probs == kth)[: top_k - np.count_nonzero(keep)]] = True
    return ids[keep]


#: how many of the most probable tokens are sorted first when looking for
#: the top-p cut-off; if these do not reach top_p, 8 times as many, and so on
#: up to all of them (a flat distribution is not sorted whole at once).
_TOP_P_FIRST_TRY = 512
_TOP_P_GROWTH = 8


def top_p_cutoff(probs, top_p):
    """The probability of the token at which the cumulative probability, in
    decreasing order, first reaches ``top_p`` (0 if it never does)."""
    return float(top_p_cutoffs(np.asarray(probs)[None, :], np.array([top_p], dtype=np.float64))[0])


def top_p_cutoffs(probs, top_p):
    """``top_p_cutoff`` of every row of ``probs`` ``(n, n_vocab)``, with
    ``top_p`` a vector of ``n``: float64 vector."""
    n, n_vocab = probs.shape
    cutoffs = np.zeros(n, dtype=np.float64)
    todo = np.arange(n)
    m = min(n_vocab, _TOP_P_FIRST_TRY)
    while todo.size:
        # the m largest of each row, in decreasing order: the same prefix as a
        # full sort, so the same (sequential) cumulative sums
        rows = _take(probs, todo)
        top = np.sort(np.partition(rows, n_vocab - m, axis=1)[:, n_vocab - m:] if m < n_vocab else rows,
                      axis=1)[:, ::-1]
        reached = np.cumsum(top, axis=1) >= top_p[todo, None]
        found = reached.any(axis=1)
        first = np.argmax(reached, axis=1)
        cutoffs[todo[found]] = top[found, first[found]]
        if m == n_vocab:
            break  # rows never reaching top_p keep the cut-off 0
        todo, m = todo[~found], min(n_vocab, m * _TOP_P_GROWTH)
    return cutoffs


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

    @property
    def bans_everything(self):
        """True when no token can ever be drawn (every id is banned)."""
        return bool(self._banned.all())

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


# ---------------------------------------------------------------------------
# A batch of rows at once
# ---------------------------------------------------------------------------
#
# The steps of ``Sampler.sample`` over an (n, n_vocab) array.  Where the row
# version keeps index lists (the candidates, then the top-k ids), these keep
# boolean masks over the whole vocabulary, which select the same tokens:
# - sums and maxima along a row are numpy's same per-row reductions, and
#   every other step is elementwise, so the probabilities are the same;
# - the top-p cut-off is the same function (top_p_cutoffs);
# - the draw packs each row's candidates to the left in id order, padded
#   with weight 0 at the end (x + 0.0 == x exactly), so each row's
#   sequential cumulative sum, and the first point of it above u, are the
#   row version's.
# tests/test_batch_sampling.py checks the tokens against Sampler.sample.


#: rows sampled together hold about this many values: a block of float64
#: temporaries then stays in the CPU's L2 cache (a 65536-token vocabulary is
#: sampled 2 rows at a time, a 256-token one 512 rows at a time).
BLOCK_VALUES = 2**17


def sample_batch(samplers, logits):
    """One token per row of ``logits`` ``(n, n_vocab)``: row ``i`` drawn by
    ``samplers[i]`` (its settings, penalties and generator), exactly the
    token ``samplers[i].sample(logits[i])`` would give.  int64 vector."""
    samplers = list(samplers)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != len(samplers):
        raise ValueError("logits must have shape (%d, n_vocab) for %d samplers, got %s"
                         % (len(samplers), len(samplers), logits.shape))
    for i, sampler in enumerate(samplers):
        if sampler.n_vocab != logits.shape[1]:
            raise ValueError("logits have %d values per row, sampler %d expects %d"
                             % (logits.shape[1], i, sampler.n_vocab))
    tokens = np.zeros(len(samplers), dtype=np.int64)
    rows = max(1, BLOCK_VALUES // max(logits.shape[1], 1))
    for start in range(0, len(samplers), rows):
        try:
            tokens[start:start + rows] = _sample_block(samplers[start:start + rows], logits[start:start + rows])
        except _DeadRow as dead:
            raise _DeadRow(start + dead.row) from None
    return tokens


def _sample_block(samplers, logits):
    params = [s.params for s in samplers]
    # the penalties at the present tokens only (few): (row, column, count)
    cols = [np.flatnonzero(s.present) for s in samplers]
    rows = np.repeat(np.arange(len(samplers)), [c.size for c in cols])
    counts = np.concatenate([s.counts[c] for s, c in zip(samplers, cols)])
    penalised = penalise_rows(logits, (rows, np.concatenate(cols)), counts,
                              np.stack([s._banned for s in samplers]),
                              _column(params, "alpha_presence"), _column(params, "alpha_frequency"))
    return sample_rows(penalised, _column(params, "temperature"), _column(params, "top_p"),
                       _column(params, "top_k"), [s.rng for s in samplers])


def _column(params, name):
    return np.array([getattr(p, name) for p in params], dtype=np.int64 if name == "top_k" else np.float64)


class _DeadRow(ValueError):
    def __init__(self, row):
        super().__init__("row %d: every token is banned or the logits are not finite" % row)
        self.row = row


def penalise_rows(logits, present, counts, banned, alpha_presence, alpha_frequency):
    """A float64 copy of ``logits`` ``(n, n_vocab)`` with each row's
    penalties applied as ``Sampler.penalised`` does: ``present`` is
    ``(rows, columns)`` of the present tokens, ``counts`` their counts,
    ``banned`` a boolean array of the logits' shape, the alphas vectors of
    ``n``."""
    out = np.array(logits, dtype=np.float64)
    rows, cols = present
    # logit -= alpha_presence + count * alpha_frequency, where present
    out[rows, cols] -= alpha_presence[rows] + counts * alpha_frequency[rows]
    out[banned] = -np.inf
    return out


def sample_rows(penalised, temperature, top_p, top_k, rngs):
    """One token per row of the penalised logits ``(n, n_vocab)``, with
    per-row ``temperature``, ``top_p``, ``top_k`` (vectors of ``n``) and
    numpy Generators ``rngs`` (one per row, drawn from only where the
    temperature is > 0, as in ``Sampler.sample``).  int64 vector."""
    dead = ~np.isfinite(penalised).any(axis=1)
    if dead.any():
        raise _DeadRow(int(np.argmax(dead)))
    tokens = np.argmax(penalised, axis=1)  # temperature 0: greedy, ties to the lowest id
    hot = np.flatnonzero(np.asarray(temperature) > 0)
    if hot.size:
        tokens[hot] = _draw_tempered(_take(penalised, hot), np.asarray(temperature, dtype=np.float64)[hot],
                                     np.asarray(top_p, dtype=np.float64)[hot], np.asarray(top_k)[hot],
                                     [rngs[i] for i in hot])
    return tokens


def _draw_tempered(logits, temperature, top_p, top_k, rngs):
    """``candidates`` then ``draw`` for every row (all temperatures > 0)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    keep = np.isfinite(shifted)  # top_p >= 1: every token not banned
    nucleus = np.flatnonzero(top_p < 1)
    if nucleus.size:
        some = _take(probs, nucleus)
        keep[nucleus] = some >= top_p_cutoffs(some, top_p[nucleus])[:, None]
    _top_k_masks(keep, probs, top_k)
    return _draw_candidates(keep, shifted, temperature, rngs)


def _take(array, rows):
    """``array[rows]``, without a copy when ``rows`` are all rows in order."""
    return array if rows.size == array.shape[0] else array[rows]


def _top_k_masks(keep, probs, top_k):
    """Narrows each row's mask ``keep`` to its ``top_k`` most probable
    tokens (where 0 < top_k < candidates), ties with the k-th kept in id
    order up to k: ``top_k_ids`` on masks."""
    rows = np.flatnonzero((top_k > 0) & (top_k < keep.sum(axis=1)))
    if not rows.size:
        return
    p = np.where(keep[rows], probs[rows], -1.0)  # -1: not a candidate (probabilities are >= 0)
    at = p.shape[1] - top_k[rows]                # where the k-th largest lands in ascending order
    kth = np.partition(p, np.unique(at), axis=1)[np.arange(rows.size), at][:, None]
    above = p > kth
    tied = p == kth
    room = top_k[rows] - np.count_nonzero(above, axis=1)
    crowded = np.flatnonzero(np.count_nonzero(tied, axis=1) > room)  # more ties than places left
    tied[crowded] &= np.cumsum(tied[crowded], axis=1) <= room[crowded, None]
    keep[rows] = above | tied


def _draw_candidates(keep, shifted, temperature, rngs):
    """``draw`` for every row over its candidates (``keep``), in id order,
    with the weights ``exp(shifted / temperature)``.  The candidates are
    packed to the left of an (n, most candidates) array padded with weight
    0 at the end, so each row's sequential cumulative sum is the row
    version's, and only the candidates are exponentiated and summed."""
    rows, cols = np.nonzero(keep)  # row-major: ids ascending within a row
    per_row = np.bincount(rows, minlength=keep.shape[0])
    place = np.arange(rows.size) - (np.cumsum(per_row) - per_row)[rows]
    weights = np.zeros((keep.shape[0], per_row.max()))
    weights[rows, place] = np.exp(shifted[rows, cols] / temperature[rows])
    ids = np.zeros(weights.shape, dtype=np.int64)
    ids[rows, place] = cols
    cdf = np.cumsum(weights, axis=1)
    point = np.array([rng.random() for rng in rngs]) * cdf[:, -1]
    index = np.count_nonzero(cdf <= point[:, None], axis=1)  # searchsorted(side="right")
    # rounding can put the point at the very end: take the last positive weight
    last = weights.shape[1] - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)
    return ids[np.arange(ids.shape[0]), np.minimum(index, last)]
