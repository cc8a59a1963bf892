"""Continuous batching: many generations advanced together, one batched
evaluation (``eval_batch``) per step.

    scheduler = Scheduler(model, max_batch=8)
    job = scheduler.submit(prompt_ids, max_tokens=100, sampling=SamplingParams(seed=1))
    while scheduler.has_work:
        for progressed in scheduler.step():
            print(progressed.id, progressed.new_text())

``Scheduler.step()`` evaluates, in one ``eval_batch`` call, the whole
prompt of every job that has just joined and the last drawn token of every
other active job; then it draws the next token of each of them at once
(``sampling.sample_batch``).  At most ``max_batch`` jobs are active; the
others wait, in the order they were submitted, and join as soon as a job
finishes or is cancelled.

Each job behaves exactly as ``generation.generate`` with the same prompt,
settings and seed: the per-sequence rules (penalties, stop tokens, the end
of text, stop strings, UTF-8 pieces) are ``generation.Output``, shared with
it, and the batched draw gives, row by row, the token of ``Sampler.sample``.
So the text equals that of ``generate`` whenever ``eval_batch`` gives each
sequence the logits of evaluating it alone.

Threads: ``step()`` runs on one thread at a time (a second concurrent call
raises ``RuntimeError``); ``submit``, ``cancel``, ``Job.new_text`` and the
``active`` / ``waiting`` lists may be used from any thread meanwhile.  Only
``step()`` calls the model.

``generate_many(model, prompts, ...)`` runs a list of prompts to the end
this way and returns their texts in order.
"""

import collections
import itertools
import threading

import numpy as np

from . import tokenizers
from .generation import STOP_MAX_TOKENS, STOP_STRING, STOP_TOKEN, Output, check_prompt_ids
from .sampling import SamplingParams, sample_batch

#: ``Job.finish_reason`` values (the OpenAI names)
FINISH_LENGTH = "length"
FINISH_STOP = "stop"
FINISH_CANCELLED = "cancelled"

_FINISH_OF_STOP = {STOP_MAX_TOKENS: FINISH_LENGTH, STOP_TOKEN: FINISH_STOP, STOP_STRING: FINISH_STOP}


class Job:
    """One generation in a ``Scheduler`` (made by ``Scheduler.submit``).

    Attributes:
        id: an int, unique within the scheduler, increasing in submission order.
        prompt_ids: the prompt's token ids (evaluated from ``submit``'s state).
        n_prompt_tokens: ``len(prompt_ids)``.
        tokens, n_generated: the ids generated so far (stop tokens excluded).
        text: all the text produced so far (as ``Generation.text``).
        finished: True once the job has ended.
        finish_reason: None while running, then "length" (``max_tokens``
            reached), "stop" (a stop token, the end of text or a stop string)
            or "cancelled".
        stop_reason: the ``generation`` STOP_* constant when not cancelled.
        prompt_state, prompt_logits: the state and next-token logits after
            the prompt (None until it is evaluated): what a prompt-state
            cache keeps.
        state, logits: after the prompt and every generated token that has
            been evaluated; once finished, after every generated token (as
            ``Generation.state`` / ``.logits``, so ``submit([], state=...,
            logits=...)`` continues the job).
    """

    def __init__(self, job_id, prompt_ids, output, state, logits):
        self.id = job_id
        self.prompt_ids = prompt_ids
        self.state = state
        self.logits = logits
        self.prompt_state = None if prompt_ids else state
        self.prompt_logits = None if prompt_ids else logits
        self.finish_reason = None
        self._output = output
        self._feed = list(prompt_ids)  # the tokens the next step evaluates
        self._cancel = False
        self._unread = ""
        self._unread_lock = threading.Lock()

    n_prompt_tokens = property(lambda self: len(self.prompt_ids))
    tokens = property(lambda self: list(self._output.tokens), doc="The ids generated so far.")
    n_generated = property(lambda self: len(self._output.tokens))
    text = property(lambda self: self._output.text, doc="All the text produced so far.")
    finished = property(lambda self: self.finish_reason is not None)
    stop_reason = property(lambda self: self._output.stop_reason)

    def new_text(self):
        """The text produced since the previous call: whole UTF-8
        characters only, never any part of a stop string (a possible start
        of one is held back until it is clear)."""
        with self._unread_lock:
            text, self._unread = self._unread, ""
        return text

    def __repr__(self):
        return "<rwkv_cpp.batching.Job %d: %d prompt tokens, %d generated%s>" % (
            self.id, self.n_prompt_tokens, self.n_generated,
            ", finished (%s)" % self.finish_reason if self.finished else "")

    # -- driven by the scheduler ---------------------------------------------

    def _evaluated(self, logits, state):
        """The model has evaluated ``_feed``."""
        self.logits, self.state = logits, state
        if self.prompt_state is None:
            self.prompt_state, self.prompt_logits = state, logits
        self._feed = []

    def _take(self, token):
        """The token drawn for this job: text, and the next token to evaluate."""
        piece, feed = self._output.push(token)
        if feed:
            self._feed = [int(token)]
        if piece:
            with self._unread_lock:
                self._unread += piece

    def _end(self, reason):
        self.finish_reason = reason
        self._feed = []


class Scheduler:
    """Runs many jobs on one model or context with continuous batching
    (see the module docstring).

    ``model_or_context``: a ``Model`` (its default context) or a
    ``Context``.  ``max_batch``: the most jobs evaluated together.
    ``tokenizer``: a name or ``Tokenizer`` overriding the model's.
    """

    def __init__(self, model_or_context, *, max_batch=8, tokenizer=None):
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError("max_batch must be an int >= 1, got %r" % (max_batch,))
        self.model = model_or_context
        self.max_batch = int(max_batch)
        self.tokenizer = tokenizers.for_model(model_or_context, tokenizer)
        self._ids = itertools.count()
        self._waiting = collections.deque()
        self._active = []
        self._lock = threading.Lock()       # the two lists
        self._stepping = threading.Lock()   # one step() at a time
        # the draws run between evaluations, on as many threads as they use
        self._sampling_threads = int(getattr(model_or_context, "n_threads", 1) or 1)

    @property
    def active(self):
        """The jobs being evaluated (a copy of the list)."""
        with self._lock:
            return list(self._active)

    @property
    def waiting(self):
        """The jobs waiting for a place, first to join first (a copy)."""
        with self._lock:
            return list(self._waiting)

    @property
    def has_work(self):
        """True while a job is active or waiting."""
        with self._lock:
            return bool(self._active or self._waiting)

    def submit(self, prompt, *, max_tokens=200, sampling=None, state=None, logits=None, stop_at_eos=True):
        """Queues a generation; returns its ``Job``.

        ``prompt``: token ids, or text (``str``/``bytes``, through the
        tokenizer), evaluated from ``state`` (None: the initial state).
        An empty prompt continues from ``state`` and ``logits`` (both
        needed), e.g. a finished job's.  ``max_tokens``, ``sampling``
        (a ``SamplingParams``; its ``seed`` seeds this job's generator)
        and ``stop_at_eos`` as in ``generation.generate``.  Every argument
        is checked here (ValueError / TypeError), so that a bad request
        never fails a step that other jobs share.
        """
        ids = self._prompt_ids(prompt)
        output = Output(self.tokenizer, self.model.n_vocab, sampling, max_tokens, stop_at_eos)
        if output.sampler.bans_everything:
            raise ValueError("sampling bans every token of the vocabulary")
        state = self._checked(state, self.model.state_len, "state")
        logits = self._checked(logits, self.model.n_vocab, "logits")
        if not ids and (state is None or logits is None):
            raise ValueError("empty prompt: give tokens to start from, or continue with both state= and logits=")
        job = Job(next(self._ids), ids, output, state, logits)
        with self._lock:
            self._waiting.append(job)
        return job

    def cancel(self, job):
        """Ends ``job`` (active or waiting) at the next step, freeing its
        place; its ``finish_reason`` becomes "cancelled".  Nothing happens
        to a job that has already finished."""
        job._cancel = True

    def step(self):
        """One batched evaluation over every active job (new ones join
        first, up to ``max_batch``), then one token drawn for each.
        Returns the jobs that progressed (new text, new state, or
        finished, cancelled ones included).  Nothing to do: []."""
        if not self._stepping.acquire(blocking=False):
            raise RuntimeError("Scheduler.step is running on another thread; one step at a time")
        try:
            with self._lock:
                cancelled = self._drop_cancelled()
                self._admit()
                batch = list(self._active)
            self._evaluate([job for job in batch if job._feed])
            self._draw([job for job in batch if not job._output.done])
            self._finish([job for job in batch if job._output.done and not job._feed])
            return cancelled + batch
        finally:
            self._stepping.release()

    # -- the parts of a step --------------------------------------------------

    def _drop_cancelled(self):
        gone = [job for job in itertools.chain(self._active, self._waiting) if job._cancel and not job.finished]
        for job in gone:
            job._end(FINISH_CANCELLED)
        self._active = [job for job in self._active if not job.finished]
        self._waiting = collections.deque(job for job in self._waiting if not job.finished)
        return gone

    def _admit(self):
        while self._waiting and len(self._active) < self.max_batch:
            self._active.append(self._waiting.popleft())

    def _evaluate(self, jobs):
        """One ``eval_batch`` of every job's pending tokens (a prompt, or
        the last drawn token).  If it raises, no job has changed."""
        if not jobs:
            return
        logits, states = self.model.eval_batch([job._feed for job in jobs], [job.state for job in jobs])
        for i, job in enumerate(jobs):
            # copies: a job (or a prompt cache) keeps its rows, not the whole batch
            job._evaluated(logits[i].copy(), states[i].copy())

    def _draw(self, jobs):
        if not jobs:
            return
        tokens = sample_batch([job._output.sampler for job in jobs], np.stack([job.logits for job in jobs]),
                              n_threads=self._sampling_threads)
        for job, token in zip(jobs, tokens):
            job._take(int(token))

    def _finish(self, jobs):
        """Jobs whose sequence has ended and whose last token is evaluated."""
        for job in jobs:
            job._end(_FINISH_OF_STOP[job._output.stop_reason])
        if jobs:
            with self._lock:
                self._active = [job for job in self._active if not job.finished]

    # -- argument checks ------------------------------------------------------

    def _prompt_ids(self, prompt):
        if isinstance(prompt, (str, bytes, bytearray, memoryview)):
            ids = self.tokenizer.encode(prompt)
        else:
            try:
                ids = np.asarray(prompt)
            except (TypeError, ValueError) as exc:
                raise TypeError("prompt must be text or a sequence of token ids: %s" % exc) from None
            if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                raise TypeError("prompt must be text or a flat sequence of int token ids, got %s of %s"
                                % (type(prompt).__name__, ids.dtype))
            if ids.size and ids.min() < 0:
                raise ValueError("prompt token ids must be >= 0, got %d" % ids.min())
            ids = [int(t) for t in ids]
        if ids:
            check_prompt_ids(ids, self.model, self.tokenizer)
        return ids

    @staticmethod
    def _checked(array, length, what):
        """``array`` as a new float32 vector of ``length`` (None stays None)."""
        if array is None:
            return None
        out = np.array(array, dtype=np.float32).reshape(-1)
        if out.size != length:
            raise ValueError("%s has %d values, the model needs %d" % (what, out.size, length))
        return out


def generate_many(model, prompts, max_tokens=200, sampling=None, *, max_batch=8, tokenizer=None,
                  stop_at_eos=True):
    """Generates text after each of ``prompts`` with continuous batching;
    returns the texts, in prompt order.

    ``model``: a ``Model`` or a ``Context``.  ``prompts``: a list of texts
    (``str``/``bytes``) or token-id lists, each evaluated from the initial
    state.  ``max_tokens`` and ``sampling`` (a ``SamplingParams``, default
    the official defaults) apply to every prompt, or are lists with one item
    per prompt.  At most ``max_batch`` prompts run together; one that ends
    gives its place to the next.  Each text equals ``generate(model, prompt,
    max_tokens, sampling).read()`` with the same settings and seed.
    """
    if isinstance(prompts, (str, bytes)):
        raise TypeError("prompts must be a list of prompts; for one prompt use generate()")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    max_tokens = _per_prompt(max_tokens, len(prompts), "max_tokens", (int, np.integer))
    sampling = _per_prompt(sampling, len(prompts), "sampling", (SamplingParams, type(None)))
    scheduler = Scheduler(model, max_batch=max_batch, tokenizer=tokenizer)
    jobs = [scheduler.submit(prompt, max_tokens=n, sampling=params, stop_at_eos=stop_at_eos)
            for prompt, n, params in zip(prompts, max_tokens, sampling)]
    while scheduler.has_work:
        scheduler.step()
    return [job.text for job in jobs]


def _per_prompt(value, n, name, single):
    """``value`` repeated ``n`` times, or a list of ``n`` items as given."""
    if isinstance(value, single) and not isinstance(value, bool):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError("%s has %d items for %d prompts" % (name, len(value), n))
        return list(value)
    raise TypeError("%s must be one value or a list with one per prompt, got %s" % (name, type(value).__name__))
