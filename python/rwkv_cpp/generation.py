"""Streaming text generation: ``generate(model, prompt)`` returns a
``Generation``, an iterator of text pieces as they become valid UTF-8;
afterwards (or at any point) its ``state`` and ``logits`` are those after
every token produced so far, so a later ``generate(model, more_text,
state=g.state)`` (or, with no new text, ``generate(model, "",
state=g.state, logits=g.logits)``) continues it.  ``model`` is a ``Model``
or a ``Context`` (for generating on several threads at once, one context
each).  The command line is ``python -m rwkv_cpp.generate`` (generate.py).

``Output`` holds the rules of one generated sequence (penalties, stop
tokens, stop strings, UTF-8 pieces); ``Generation`` drives one with the
model, and ``rwkv_cpp.batching.Scheduler`` drives many in one batch.
"""

import dataclasses
import time

import numpy as np

from . import tokenizers
from .sampling import Sampler, SamplingParams

#: why a generation ended (``Generation.stop_reason``)
STOP_MAX_TOKENS = "max_tokens"
STOP_TOKEN = "stop_token"
STOP_STRING = "stop_string"


class Generation:
    """An iterator of text pieces generated after a prompt.

    Attributes (updated as it runs):
        tokens: ids generated so far (stop tokens excluded).
        text: the whole generated text: reading it runs the generation to
            its end (``text_so_far`` does not).
        text_so_far: the text yielded so far.
        state, logits: the model's state and next-token logits after the
            prompt and every generated token (always a matching pair: an
            exception or a stop between two tokens leaves those of the last
            complete token).
        stop_reason: None while running, then STOP_MAX_TOKENS, STOP_TOKEN
            or STOP_STRING.
        prompt_tokens: the prompt's ids; prompt_seconds: the time its
            prefill took; generate_seconds: the time spent sampling and
            evaluating generated tokens (not the caller's time between
            pieces).
    """

    def __init__(self, model, prompt, max_tokens, sampling, state, logits, tokenizer, stop_at_eos):
        self.model = model
        self.tokenizer = tokenizers.for_model(model, tokenizer)
        self._output = Output(self.tokenizer, model.n_vocab, sampling, max_tokens, stop_at_eos)
        self.sampling = self._output.sampling
        self.max_tokens = self._output.max_tokens
        self.generate_seconds = 0.0
        self.prompt_tokens = self.tokenizer.encode(prompt)
        start = time.perf_counter()
        self.state, self.logits = self._prefill(state, logits)
        self.prompt_seconds = time.perf_counter() - start
        self._pieces = self._run()

    tokens = property(lambda self: self._output.tokens, doc="Ids generated so far (stop tokens excluded).")
    text_so_far = property(lambda self: self._output.text, doc="The text yielded so far.")
    stop_reason = property(lambda self: self._output.stop_reason,
                           doc="None while running, then STOP_MAX_TOKENS, STOP_TOKEN or STOP_STRING.")

    @property
    def text(self):
        """The whole generated text (runs the generation to its end first)."""
        return self.read()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._pieces)

    def read(self):
        """Runs to the end; returns the whole generated text."""
        for _ in self:
            pass
        return self.text_so_far

    def _prefill(self, state, logits):
        if self.prompt_tokens:
            check_prompt_ids(self.prompt_tokens, self.model, self.tokenizer)
            logits, state = self.model.eval_sequence(self.prompt_tokens, state)
            return state, logits
        if state is None or logits is None:
            raise ValueError("empty prompt: give text to start from, or continue a "
                             "generation with state=g.state, logits=g.logits")
        return np.array(state, dtype=np.float32), np.array(logits, dtype=np.float32)

    def _run(self):
        output = self._output
        while not output.done:
            start = time.perf_counter()
            token = int(output.sampler.sample(self.logits))
            # a token that joins the sequence is evaluated before it is
            # recorded, so that an exception inside the evaluation (Ctrl-C)
            # leaves tokens, state and logits matching
            evaluated = None if token in output.stop_ids else self.model.eval(token, self.state)
            piece, feed = output.push(token)
            if feed:
                self.logits, self.state = evaluated
            self.generate_seconds += time.perf_counter() - start
            if piece:
                yield piece


class Output:
    """The generated side of one sequence, shared by ``Generation`` (one
    sequence) and ``rwkv_cpp.batching.Scheduler`` (many at once): the
    sampler with its penalties, the stop tokens, the incremental UTF-8
    decoder and the stop strings.

    The caller draws a token with ``sampler`` from the latest logits and
    gives it to ``push``; when ``push`` says so, the model evaluates the
    token before the next draw.  ``done`` says when the sequence has ended
    (``stop_reason``).  ``tokens`` and ``text`` grow as it runs.
    """

    def __init__(self, tokenizer, n_vocab, sampling, max_tokens, stop_at_eos):
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer))):
            raise TypeError("max_tokens must be an int or None, got %s" % type(max_tokens).__name__)
        if max_tokens is not None and max_tokens < 0:
            raise ValueError("max_tokens must be >= 0, got %d" % max_tokens)
        if sampling is not None and not isinstance(sampling, SamplingParams):
            raise TypeError("sampling must be a SamplingParams, got %s" % type(sampling).__name__)
        self.tokenizer = tokenizer
        self.sampling = sampling if sampling is not None else SamplingParams()
        self.max_tokens = None if max_tokens is None else int(max_tokens)  # None: no limit
        self.sampler = Sampler(self.sampling, n_vocab, banned_from=tokenizer.n_vocab)
        self.stop_ids = set(self.sampling.token_stop)
        if stop_at_eos and tokenizer.eos_id is not None:
            self.stop_ids.add(tokenizer.eos_id)
        self.tokens = []
        self.text = ""
        self.stop_reason = STOP_MAX_TOKENS if self.max_tokens == 0 else None
        self._decoder = tokenizer.decoder()
        self._stops = _StopMatcher(self.sampling.stop)

    @property
    def done(self):
        return self.stop_reason is not None

    def push(self, token):
        """Takes the drawn ``token``.  Returns ``(piece, feed)``: the text
        now safe to emit (complete UTF-8, no part of a possible stop string;
        often "") and whether the token joined the sequence, so that the
        model must evaluate it (a stop token does not join)."""
        token = int(token)
        if token in self.stop_ids:
            self.stop_reason = STOP_TOKEN
            return self._emit(self._stops.finish(self._decoder.flush())), False
        self.tokens.append(token)
        self.sampler.accept(token, self.tokenizer.decode([token]))
        piece, stopped = self._stops.push(self._decoder.feed(token))
        if stopped:  # the text ends before the stop string; what was held back is dropped
            self.stop_reason = STOP_STRING
        elif self.max_tokens is not None and len(self.tokens) >= self.max_tokens:
            self.stop_reason = STOP_MAX_TOKENS
            piece += self._stops.finish(self._decoder.flush())
        return self._emit(piece), True

    def _emit(self, piece):
        self.text += piece
        return piece


class _StopMatcher:
    """Cuts streamed text at the first stop string, holding back any tail
    that could be the start of one."""

    def __init__(self, stops):
        self.stops = tuple(stops)
        self.held = ""

    def push(self, piece):
        """``(text that is safe to emit, stopped)``."""
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return text[:cut], True
        keep = self._partial_tail(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def finish(self, piece):
        """The rest of the text at the end (a held-back tail is emitted)."""
        text, _ = self.push(piece)
        text += self.held
        self.held = ""
        return text

    def _partial_tail(self, text):
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


def check_prompt_ids(ids, model, tokenizer):
    """Raises ValueError when a prompt id is beyond the model's vocabulary."""
    too_big = max(ids)
    if too_big >= model.n_vocab:
        raise ValueError("the %s tokenizer gave id %d, beyond the model's vocabulary (%d)"
                         % (tokenizer.name, too_big, model.n_vocab))


#: the settings ``generate`` takes as keywords, overriding those of ``sampling``
SAMPLING_KEYWORDS = ("temperature", "top_p", "top_k", "stop", "seed")


def sampling_with(sampling=None, **settings):
    """``sampling`` (default ``SamplingParams()``) with the given settings
    (``temperature``, ``top_p``, ``top_k``, ``stop``, ``seed``; None leaves
    one as it is) replaced; a ``stop`` string counts as one stop string."""
    unknown = sorted(set(settings) - set(SAMPLING_KEYWORDS))
    if unknown:
        raise TypeError("unknown sampling setting(s): %s" % ", ".join(unknown))
    changes = {k: v for k, v in settings.items() if v is not None}
    if isinstance(changes.get("stop"), str):
        changes["stop"] = (changes["stop"],)
    elif "stop" in changes:
        changes["stop"] = tuple(changes["stop"])
    base = sampling if sampling is not None else SamplingParams()
    return dataclasses.replace(base, **changes) if changes else base


def generate(model, prompt, max_tokens=200, sampling=None, state=None, tokenizer=None, *, logits=None,
             stop_at_eos=True, temperature=None, top_p=None, top_k=None, stop=None, seed=None):
    """Generates text after ``prompt`` with ``model`` (a ``Model`` or a
    ``Context``); returns a ``Generation``, an iterator of text pieces as
    they become valid UTF-8 (its ``text`` runs it to the end).

    The prompt is prefilled with ``eval_sequence`` (from ``state``, or the
    initial state).  ``sampling``: a ``rwkv_cpp.sampling.SamplingParams``
    (default: the official PIPELINE_ARGS defaults); ``temperature``,
    ``top_p``, ``top_k``, ``stop`` (a string or strings) and ``seed``, when
    given, override its fields.  ``tokenizer``: a name
    or ``Tokenizer`` overriding the model's.  Generation ends after
    ``max_tokens`` (None: no limit), at a stop token (and the tokenizer's end of text unless
    ``stop_at_eos=False``) or a stop string.  The generation's ``state`` and
    ``logits`` continue it: ``generate(model, "", state=g.state,
    logits=g.logits)``; an empty prompt needs both.
    """
    sampling = sampling_with(sampling, temperature=temperature, top_p=top_p, top_k=top_k, stop=stop, seed=seed)
    return Generation(model, prompt, max_tokens, sampling, state, logits, tokenizer, stop_at_eos)
