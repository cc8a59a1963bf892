"""Sampling of the next token from logits, with the semantics of the
official package's ``PIPELINE_ARGS`` / ``PIPELINE.sample_logits``
(``rwkv.utils``), in float64.

For one step, given the model's logits:

1. penalties: banned tokens (``token_ban``) get logit -inf; every token that
   occurred in the output so far gets ``alpha_presence + count *
   alpha_frequency`` subtracted, where ``count`` decays by ``alpha_decay``
   per generated token (see ``Sampler.accept``);
2. ``probs = exp(logit - max)``: the probabilities up to their sum ``S``
   (summed in id order); a banned token has 0;
3. top-p: the tokens whose prob is below that of the token at which the
   cumulative sum of the probs, in decreasing order, first reaches
   ``top_p * S`` are dropped (so ties with that token are kept);
   ``top_p >= 1`` keeps every token;
4. top-k (``top_k > 0``): only the ``top_k`` most probable remain;
5. temperature: ``probs ** (1 / temperature)``, renormalised; computed as
   ``exp((logit - max) / temperature)`` on the remaining tokens, the same
   distribution without underflow for small temperatures;
6. a draw from the numpy ``Generator`` (seedable): ``u = rng.random()``, then
   the first remaining token, in id order, whose cumulative weight exceeds
   ``u`` times the total.

``temperature == 0`` is greedy: the token of the largest penalised logit.

Deliberate differences from the official code: float64 instead of float32,
``top_p >= 1`` keeps every token (the official cut-off can fall to the
single best token when the float32 cumulative sum ends just below 1.0), and
ties are broken towards the lowest id instead of at random: at temperature 0
between the best tokens, in top-k between the tokens tied with the k-th
most probable.

Steps 3, 4 and 6 run in the C library (``rwkv_sample_rows``), whose sums are
sequential like numpy's ``cumsum``: ``candidates``, ``top_p_cutoff``,
``top_k_ids`` and ``draw`` here are the same steps written plainly with
numpy, the reference the tests hold it to, token for token.
``Sampler.sample`` draws one token from one row of logits;
``sample_batch`` (``sample_rows`` underneath) draws one token per row of an
``(n, n_vocab)`` array at once, with per-row settings, penalties and
generators: the same calls row by row, so the very token ``Sampler.sample``
gives.
"""

import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ._lib import ffi, lib
from .errors import error_for

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
    their unnormalised tempered probabilities ``exp((logit - max) / T)``
    (the reference of ``rwkv_sample_rows``'s steps)."""
    shifted = logits - logits.max()
    probs = np.exp(shifted)
    if top_p < 1:
        ids = np.flatnonzero(probs >= top_p_cutoff(probs, top_p))
    else:
        ids = np.arange(logits.size)
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


def top_p_cutoff(probs, top_p):
    """The value of ``probs`` (>= 0, up to a factor) at which their
    cumulative sum in decreasing order first reaches ``top_p`` times their
    sum in id order; 0 if it never does.  Both sums sequential (``cumsum``)."""
    probs = np.asarray(probs, dtype=np.float64)
    target = top_p * np.cumsum(probs)[-1]
    top = np.sort(probs)[::-1]
    reached = np.cumsum(top) >= target
    return float(top[np.argmax(reached)]) if reached.any() else 0.0


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
        p = self.params
        return int(sample_rows(adjusted[None, :], np.array([p.temperature]), np.array([p.top_p]),
                               np.array([p.top_k]), [self.rng])[0])

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
# ``Sampler.sample`` is ``sample_rows`` on one row, so a row of a batch
# gets the token it gets alone: the same numpy calls on that row (sums and
# maxima along a row are per-row reductions, the rest elementwise), then the
# same ``rwkv_sample_rows`` step.  tests/test_batch_sampling.py checks the
# tokens against Sampler.sample and tests/test_sampling.py the steps against
# the numpy reference above.


#: rows sampled together hold about this many values: a block of float64
#: temporaries (the penalised logits, probabilities, weights) then stays in
#: the CPU's L2 cache (a 65536-token vocabulary is
#: sampled 2 rows at a time, a 256-token one 512 rows at a time).
BLOCK_VALUES = 2**17


def sample_batch(samplers, logits, n_threads=1):
    """One token per row of ``logits`` ``(n, n_vocab)``: row ``i`` drawn by
    ``samplers[i]`` (its settings, penalties and generator), exactly the
    token ``samplers[i].sample(logits[i])`` would give.  int64 vector.

    ``n_threads`` > 1 samples blocks of rows on that many threads (numpy and
    the C step release the GIL); each row is still drawn by its own sampler
    alone, so the tokens do not depend on it."""
    samplers = list(samplers)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != len(samplers):
        raise ValueError("logits must have shape (%d, n_vocab) for %d samplers, got %s"
                         % (len(samplers), len(samplers), logits.shape))
    for i, sampler in enumerate(samplers):
        if sampler.n_vocab != logits.shape[1]:
            raise ValueError("logits have %d values per row, sampler %d expects %d"
                             % (logits.shape[1], i, sampler.n_vocab))
    rows = max(1, BLOCK_VALUES // max(logits.shape[1], 1))
    starts = range(0, len(samplers), rows)

    def block(start):
        try:
            return _sample_block(samplers[start:start + rows], logits[start:start + rows])
        except _DeadRow as dead:
            raise _DeadRow(start + dead.row) from None

    if n_threads > 1 and len(starts) > 1:
        blocks = list(_pool(n_threads).map(block, starts))  # the first failing block's error, as in a loop
    else:
        blocks = [block(start) for start in starts]
    return np.concatenate(blocks).astype(np.int64) if blocks else np.zeros(0, dtype=np.int64)


_pools = {}
_pools_lock = threading.Lock()


def _pool(n_threads):
    """A shared pool of ``n_threads`` threads for ``sample_batch``."""
    with _pools_lock:
        if n_threads not in _pools:
            _pools[n_threads] = concurrent.futures.ThreadPoolExecutor(n_threads, thread_name_prefix="rwkv-sample")
        return _pools[n_threads]


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


def _take(array, rows):
    """``array[rows]``, without a copy when ``rows`` are all rows in order."""
    return array if rows.size == array.shape[0] else array[rows]


_ERROR_BUF_SIZE = 1024


def _draw_tempered(logits, temperature, top_p, top_k, rngs):
    """Steps 2-6 for every row (all temperatures > 0): the probabilities
    and weights with numpy, the rest in ``rwkv_sample_rows``.  numpy's exp
    is elementwise (a value's result does not depend on the array around
    it), so the weights of whole rows are those ``candidates`` computes for
    its ids."""
    n, n_vocab = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.ascontiguousarray(np.exp(shifted))
    rows = ffi.new("struct rwkv_sample_row[]", n)
    keep = [probs]
    for i in range(n):
        rows[i].probs = ffi.cast("double *", ffi.from_buffer(probs[i]))
        if temperature[i] != 1.0:  # at 1, the weights are the probs (x / 1.0 == x)
            weights = np.ascontiguousarray(np.exp(shifted[i] / temperature[i]))
            keep.append(weights)
            rows[i].weights = ffi.cast("double *", ffi.from_buffer(weights))
        rows[i].top_p = min(float(top_p[i]), 1.0)
        rows[i].top_k = int(top_k[i])
        rows[i].u = rngs[i].random()
    tokens = np.zeros(n, dtype=np.int32)
    errbuf = ffi.new("char[]", _ERROR_BUF_SIZE)
    status = lib.rwkv_sample_rows(rows, n, n_vocab, ffi.cast("int32_t *", ffi.from_buffer(tokens)), errbuf,
                                  _ERROR_BUF_SIZE)
    if status != lib.RWKV_STATUS_OK:
        raise error_for(status, ffi.string(errbuf).decode("utf-8", errors="replace"))
    return tokens
