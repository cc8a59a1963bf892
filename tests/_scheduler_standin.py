"""TEMPORARY: the interface of rwkv_cpp.batching.Scheduler until it lands."""

import itertools

from rwkv_cpp import tokenizers
from rwkv_cpp.generation import _StopMatcher
from rwkv_cpp.sampling import Sampler, SamplingParams

_ids = itertools.count(1)


class Job:
    def __init__(self, prompt, max_tokens, sampling, state, tokenizer, n_vocab, stop_at_eos):
        self.id = next(_ids)
        self.pending = list(prompt)
        self.max_tokens = max_tokens
        self.state = state
        self.prompt_state = None
        self.tokens = []
        self.finished = False
        self.finish_reason = None
        self.n_prompt_tokens = len(prompt)
        self._tok = tokenizer
        self._sampler = Sampler(sampling, n_vocab, banned_from=tokenizer.n_vocab)
        self._stop_ids = set(sampling.token_stop) | ({tokenizer.eos_id} if stop_at_eos and tokenizer.eos_id is not None else set())
        self._decoder = tokenizer.decoder()
        self._stops = _StopMatcher(sampling.stop)
        self._text = ""

    @property
    def n_generated(self):
        return len(self.tokens)

    def new_text(self):
        text, self._text = self._text, ""
        return text

    def _end(self, reason):
        self.finished, self.finish_reason = True, reason

    def _advance(self, logits, state):
        self.state = state
        if self.prompt_state is None:
            self.prompt_state = state
        if self.max_tokens == 0:
            return self._end("length")
        token = self._sampler.sample(logits)
        if token in self._stop_ids:
            self._text += self._stops.finish(self._decoder.flush())
            return self._end("stop")
        self.tokens.append(token)
        self._sampler.accept(token, self._tok.decode([token]))
        piece, stopped = self._stops.push(self._decoder.feed(token))
        self._text += piece
        if stopped:
            return self._end("stop")
        if len(self.tokens) >= self.max_tokens:
            self._text += self._stops.finish(self._decoder.flush())
            return self._end("length")
        self.pending = [token]


class Scheduler:
    def __init__(self, model_or_context, *, max_batch=8, tokenizer=None):
        self.ctx = model_or_context
        self.max_batch = max_batch
        self.tokenizer = tokenizers.for_model(model_or_context, tokenizer)
        self.active, self.waiting = [], []

    def submit(self, prompt_ids, *, max_tokens, sampling=None, state=None, stop_at_eos=True):
        job = Job(prompt_ids, max_tokens, sampling or SamplingParams(), state, self.tokenizer, self.ctx.n_vocab,
                  stop_at_eos)
        self.waiting.append(job)
        return job

    def cancel(self, job):
        for q in (self.active, self.waiting):
            if job in q:
                q.remove(job)
        if not job.finished:
            job._end("cancelled")

    def step(self):
        while self.waiting and len(self.active) < self.max_batch:
            self.active.append(self.waiting.pop(0))
        if not self.active:
            return []
        jobs = list(self.active)
        logits, states = self.ctx.eval_batch([j.pending for j in jobs], [j.state for j in jobs])
        for i, job in enumerate(jobs):
            job._advance(logits[i], states[i].copy())
            if job.finished:
                self.active.remove(job)
        return jobs
