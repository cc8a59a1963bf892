"""Streaming text generation: ``generate(model, prompt)`` returns a
``Generation``, an iterator of text pieces as they become valid UTF-8;
afterwards (or at any point) its ``state`` and ``logits`` are those after
every token produced so far, so a later ``generate(model, more_text,
state=g.state)`` (or, with no new text, ``generate(model, "",
state=g.state, logits=g.logits)``) continues it.  ``model`` is a ``Model``
or a ``Context`` (for generating on several threads at once, one context
each).  The command line is ``python -m rwkv_cpp.generate`` (generate.py).
"""

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
        text: the text yielded so far.
        state, logits: the model's state and next-token logits after the
            prompt and every generated token.
        stop_reason: None while running, then STOP_MAX_TOKENS, STOP_TOKEN
            or STOP_STRING.
    """

    def __init__(self, model, prompt, max_tokens, sampling, state, logits, tokenizer, stop_at_eos):
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0, got %d" % max_tokens)
        self.model = model
        self.tokenizer = tokenizers.for_model(model, tokenizer)
        self.sampling = sampling if sampling is not None else SamplingParams()
        self.max_tokens = int(max_tokens)
        self.tokens = []
        self.text = ""
        self.stop_reason = None
        self.prompt_tokens = self.tokenizer.encode(prompt)
        self.state, self.logits = self._prefill(state, logits)
        self._sampler = Sampler(self.sampling, model.n_vocab, banned_from=self.tokenizer.n_vocab)
        self._stop_ids = set(self.sampling.token_stop)
        if stop_at_eos and self.tokenizer.eos_id is not None:
            self._stop_ids.add(self.tokenizer.eos_id)
        self._pieces = self._run()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._pieces)

    def read(self):
        """Runs to the end; returns the whole generated text."""
        for _ in self:
            pass
        return self.text

    def _prefill(self, state, logits):
        if self.prompt_tokens:
            _check_prompt_ids(self.prompt_tokens, self.model, self.tokenizer)
            logits, state = self.model.eval_sequence(self.prompt_tokens, state)
            return state, logits
        if state is None or logits is None:
            raise ValueError("empty prompt: give text to start from, or continue a "
                             "generation with state=g.state, logits=g.logits")
        return np.array(state, dtype=np.float32), np.array(logits, dtype=np.float32)

    def _run(self):
        decoder = self.tokenizer.decoder()
        stops = _StopMatcher(self.sampling.stop)
        for _ in range(self.max_tokens):
            token = self._sampler.sample(self.logits)
            if token in self._stop_ids:
                self.stop_reason = STOP_TOKEN
                break
            self._feed(token)
            piece, stopped = stops.push(decoder.feed(token))
            if piece:
                self.text += piece
                yield piece
            if stopped:
                self.stop_reason = STOP_STRING
                return
        if self.stop_reason is None:
            self.stop_reason = STOP_MAX_TOKENS
        rest = stops.finish(decoder.flush())
        if rest:
            self.text += rest
            yield rest

    def _feed(self, token):
        """Accepts ``token``: penalties, then the model's next state and logits."""
        self.tokens.append(token)
        self._sampler.accept(token, self.tokenizer.decode([token]))
        logits, state = self.model.eval(token, self.state)
        self.state, self.logits = state, logits


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


def _check_prompt_ids(ids, model, tokenizer):
    too_big = max(ids)
    if too_big >= model.n_vocab:
        raise ValueError("the %s tokenizer gave id %d, beyond the model's vocabulary (%d)"
                         % (tokenizer.name, too_big, model.n_vocab))


def generate(model, prompt, max_tokens=200, sampling=None, state=None, tokenizer=None, *, logits=None,
             stop_at_eos=True):
    """Generates text after ``prompt`` with ``model`` (a ``Model`` or a
    ``Context``); returns a ``Generation``, an iterator of text pieces as
    they become valid UTF-8.

    The prompt is prefilled with ``eval_sequence`` (from ``state``, or the
    initial state).  ``sampling``: a ``rwkv_cpp.sampling.SamplingParams``
    (default: the official PIPELINE_ARGS defaults).  ``tokenizer``: a name
    or ``Tokenizer`` overriding the model's.  Generation ends after
    ``max_tokens``, at a stop token (and the tokenizer's end of text unless
    ``stop_at_eos=False``) or a stop string.  The generation's ``state`` and
    ``logits`` continue it: ``generate(model, "", state=g.state,
    logits=g.logits)``; an empty prompt needs both.
    """
    return Generation(model, prompt, max_tokens, sampling, state, logits, tokenizer, stop_at_eos)
