"""The server's one scheduler thread: it owns the model, its context, the
batching ``Scheduler`` and the prompt-state cache, and is the only thread
that calls the C library.

HTTP handlers (on the asyncio loop) make a ``Ticket`` — checked token ids,
``SamplingParams``, a token limit — and hand it over with ``Engine.submit``,
which refuses it (429) when ``max_batch + max_queue`` requests are already
admitted.  The thread loops: take the new tickets and cancellations from its
inbox, start each ticket's job (from the longest cached prefix of its
prompt), run one batched ``Scheduler.step()`` over every active job (new
prompts' prefill joined with the others' decode), and post each job's new
text to its ticket's asyncio queue.  Requests join and leave between steps
(continuous batching); a cancelled ticket's job is dropped at the next
pass, freeing its slot.

After a job ends, the state after its prompt is cached under the prompt's
tokens; after a chat reply, the state after the reply as the next request
will render it in its history (``ChatTemplate.reply_ids``, one prefill of the
reply's tokens) is cached too, so the next turn prefills only its own
tokens.  Embedding requests run in this thread between steps as well.
"""

import asyncio
import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from .. import embedding, state_file, tokenizers
from .._model import Model
from ..batching import Scheduler
from .cache import PromptCache
from .protocol import APIError, ChatTemplate, Limits

log = logging.getLogger("rwkv_cpp.server")

_STOP = object()
_ids = itertools.count(1)


@dataclass
class EngineConfig:
    """What the scheduler thread loads and how it batches."""

    model_path: str
    model_name: Optional[str] = None  # the id served (default: the file name without .gguf)
    threads: Optional[int] = None
    packed_cache: Optional[str] = None  # Model(packed_cache=...)
    max_batch: int = 8
    max_queue: int = 64
    state_cache_mb: float = 256.0
    tokenizer: Optional[str] = None
    embed_stats: Optional[str] = None
    initial_state: Optional[str] = None  # a state file or a state-tuned checkpoint every request starts from
    template: ChatTemplate = field(default_factory=ChatTemplate)
    limits: Limits = field(default_factory=Limits)

    @property
    def served_name(self):
        if self.model_name:
            return self.model_name
        name = os.path.basename(self.model_path)
        return name[:-5] if name.endswith(".gguf") else name


class Ticket:
    """One request on its way through the scheduler thread.

    Events posted to ``events`` (an ``asyncio.Queue`` of the handler's loop):
    ``("text", piece)``, then ``("done", finish_reason, usage)``; or
    ``("error", APIError)``; or, for embeddings, ``("embeddings", array)``.
    """

    def __init__(self, loop, kind, prompt=None, *, max_tokens=0, sampling=None, inputs=None):
        self.id = next(_ids)
        self.loop = loop
        self.events = asyncio.Queue()
        self.kind = kind  # "completion", "chat" or "embedding"
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.inputs = inputs
        self.job = None
        self.n_cached = 0
        self.reply = []
        self.finished = False

    def post(self, *event):
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the handler's loop is closed: nobody is listening
            pass


class Engine:
    """The scheduler thread and what it owns (see the module docstring)."""

    def __init__(self, config, metrics, on_load_error=None):
        """``on_load_error(message)``: called (from the thread) when the
        model does not load; the program exits then."""
        self.config = config
        self._on_load_error = on_load_error
        self.metrics = metrics
        self.status = "loading"  # then "ready", or "failed" with load_error set
        self.load_error = None
        self.model = self.context = self.scheduler = self.tokenizer = self.stats = None
        self.initial_state = None  # None: the model's own
        self.cache = PromptCache(int(config.state_cache_mb * 2 ** 20))
        self.created = int(time.time())
        self._inbox = queue.SimpleQueue()
        self._admitted = 0
        self._admit_lock = threading.Lock()
        self._tickets = {}  # job id -> ticket
        self._thread = threading.Thread(target=self._run, name="rwkv-scheduler", daemon=True)
        metrics.record_cache(self.cache)

    # -- the handlers' side ------------------------------------------------------

    def start(self):
        self._thread.start()

    def stop(self, timeout=30):
        self._inbox.put(_STOP)
        self._thread.join(timeout)

    @property
    def capacity(self):
        return self.config.max_batch + self.config.max_queue

    def submit(self, ticket):
        """Hands ``ticket`` to the scheduler thread, or raises a 429
        ``APIError`` when the batch and the queue are full."""
        with self._admit_lock:
            if self._admitted >= self.capacity:
                raise APIError(429, "the server is busy: %d requests are running or queued; retry later"
                               % self._admitted, code="queue_full", headers={"Retry-After": "1"})
            self._admitted += 1
        self._inbox.put(("submit", ticket))

    def cancel(self, ticket):
        """Drops ``ticket``'s job at the scheduler's next pass (a client
        that went away)."""
        if not ticket.finished:
            self._inbox.put(("cancel", ticket))

    # -- the scheduler thread --------------------------------------------------------

    def _run(self):
        try:
            self._load()
        except Exception as exc:  # a model that does not load: /health says so
            self.load_error = "%s: %s" % (type(exc).__name__, exc)
            self.status = "failed"
            log.error("the model did not load: %s", self.load_error)
            if self._on_load_error:
                self._on_load_error(self.load_error)
            return
        self.status = "ready"
        try:
            self._loop()
        finally:
            self.context.close()
            self.model.close()

    def _load(self):
        cfg = self.config
        self.model = Model(cfg.model_path, cfg.threads, packed_cache=cfg.packed_cache)
        self.context = self.model.context(cfg.threads)
        self.tokenizer = tokenizers.for_model(self.model, cfg.tokenizer)
        if cfg.embed_stats:
            self.stats = embedding.EmbedStats.load(cfg.embed_stats, self.model)
        if cfg.initial_state:
            self.initial_state = state_file.initial_state(cfg.initial_state, self.model)
        self.scheduler = Scheduler(self.context, max_batch=cfg.max_batch, tokenizer=self.tokenizer)

    def _loop(self):
        while True:
            idle = not (self.scheduler.active or self.scheduler.waiting)
            if not self._take_inbox(block=idle):
                return
            if self.scheduler.active or self.scheduler.waiting:
                self._step()
            self.metrics.queue_depth.set(len(self.scheduler.waiting))
            self.metrics.active.set(len(self.scheduler.active))

    def _take_inbox(self, block):
        """Handles every message waiting (waits for one if ``block``);
        False on the stop message."""
        while True:
            try:
                message = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if message is _STOP:
                return False
            kind, ticket = message
            if kind == "cancel":
                self._cancel(ticket)
            elif ticket.kind == "embedding":
                self._embed(ticket)
            else:
                self._start(ticket)

    def _start(self, ticket):
        n_cached, state = self.cache.longest_prefix(ticket.prompt)
        (self.metrics.cache_hits if n_cached else self.metrics.cache_misses).inc()
        if not n_cached:  # every cached state descends from the same start, so hits stay valid
            state = self.initial_state
        try:
            job = self.scheduler.submit(ticket.prompt[n_cached:], max_tokens=ticket.max_tokens,
                                        sampling=ticket.sampling, state=state)
        except (ValueError, TypeError) as exc:  # the scheduler's own checks of a request
            self._release(ticket)
            ticket.post("error", APIError(400, str(exc)))
            return
        ticket.job, ticket.n_cached = job, n_cached
        self._tickets[job.id] = ticket

    def _step(self):
        start = time.perf_counter()
        before = {job.id: job.n_generated for job in self.scheduler.active}
        try:
            progressed = self.scheduler.step()
        except Exception as exc:  # a failure of the library: every running request gets the error
            log.exception("a batched step failed")
            self._fail_all(exc)
            return
        generated = sum(job.n_generated - before.get(job.id, 0) for job in progressed)
        self.metrics.record_step(len(progressed), time.perf_counter() - start, generated)
        for job in progressed:
            ticket = self._tickets.get(job.id)
            if ticket is None:
                continue
            piece = job.new_text()
            if piece:
                ticket.reply.append(piece)
                ticket.post("text", piece)
            if job.finished:
                self._finish(ticket, job.finish_reason)

    def _finish(self, ticket, reason):
        job = ticket.job
        self._tickets.pop(job.id, None)
        self._release(ticket)
        usage = {"prompt_tokens": len(ticket.prompt), "completion_tokens": job.n_generated,
                 "total_tokens": len(ticket.prompt) + job.n_generated,
                 "prompt_tokens_details": {"cached_tokens": ticket.n_cached}}
        self.metrics.prompt_tokens.inc(len(ticket.prompt))
        self.metrics.cached_tokens.inc(ticket.n_cached)
        self.metrics.prefilled_tokens.inc(len(ticket.prompt) - ticket.n_cached)
        ticket.post("done", "length" if reason == "length" else "stop", usage)
        if reason != "cancelled":
            self._remember(ticket, job)

    def _remember(self, ticket, job):
        """Caches the state after the prompt and, after a chat reply, the
        state after the reply as the next request's history holds it."""
        if job.prompt_state is None:
            return
        self.cache.put(ticket.prompt, job.prompt_state)
        if ticket.kind == "chat":
            reply = self.config.template.reply_ids("".join(ticket.reply), self.tokenizer.encode)
            if reply:
                _, state = self.context.eval_sequence(reply, job.prompt_state, logits=False)
                self.cache.put(ticket.prompt + reply, state)
        self.metrics.record_cache(self.cache)

    def _cancel(self, ticket):
        job = ticket.job
        if ticket.finished or job is None or self._tickets.get(job.id) is not ticket:
            return
        self.scheduler.cancel(job)
        self._tickets.pop(job.id, None)
        self._release(ticket)
        ticket.post("done", "cancelled", None)

    def _release(self, ticket):
        if not ticket.finished:
            ticket.finished = True
            with self._admit_lock:
                self._admitted -= 1

    def _fail_all(self, exc):
        error = APIError(500, "the model failed: %s" % exc, code="model_error")
        for ticket in list(self._tickets.values()):
            self.scheduler.cancel(ticket.job)
            self._tickets.pop(ticket.job.id, None)
            self._release(ticket)
            ticket.post("error", error)

    def _embed(self, ticket):
        try:
            vectors = [embedding.embed(self.context, ids, stats=self.stats) for ids in ticket.inputs]
        except (ValueError, embedding.UnsupportedModelError) as exc:
            ticket.post("error", APIError(400, str(exc)))
        else:
            ticket.post("embeddings", vectors)
        finally:
            self._release(ticket)
