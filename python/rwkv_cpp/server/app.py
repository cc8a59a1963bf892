"""The HTTP side: a Starlette app with the OpenAI routes, over an ``Engine``.

Handlers read the body (at most ``max_body_bytes``), check it into a request
model (``protocol.py``), hand a ``Ticket`` to the engine and relay its
events, as one JSON response or as server-sent events (``data: {json}\\n\\n``
pieces, then ``data: [DONE]``).  A client that goes away mid-request has its
job cancelled.  Every error is an OpenAI error body; a 5xx only comes from a
failure of the server itself, never from what a client sent.
"""

import asyncio
import base64
import hmac
import json
import time

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .engine import Ticket
from .protocol import (APIError, ChatRequest, CompletionRequest, EmbeddingRequest, check_common, check_model_name,
                       error_body, parse_json, prompt_ids, sampling_params, validate)

#: default ``max_tokens`` of a completion (OpenAI's) and of a chat reply
COMPLETION_MAX_TOKENS = 16
CHAT_MAX_TOKENS = 256
#: seconds between checks that a client waiting for a whole response is still there
DISCONNECT_POLL_S = 0.5
OPEN_PATHS = ("/health",)


def create_app(engine, *, api_key=None, cors_origins=(), max_body_bytes=1 << 20):
    """The ASGI app serving ``engine``; starts the engine's thread on
    startup and stops it on shutdown."""
    api = _Handlers(engine, max_body_bytes)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
    ]
    middleware = [Middleware(_BearerAuth, api_key=api_key)] if api_key else []
    if cors_origins:
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(cors_origins),
                                        allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]))
    handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=api.lifespan)
    app.state.metrics = engine.metrics
    return app


# -- errors and auth ---------------------------------------------------------------


#: the paths counted by name in rwkv_requests_total (any other is "other")
ROUTE_PATHS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings")


def _error_response(status, message, *, param=None, code=None, headers=None):
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def count(request, response):
    """Counts ``response`` in ``rwkv_requests_total``; returns it."""
    path = request.url.path if request.url.path in ROUTE_PATHS else "other"
    request.app.state.metrics.requests.labels(path, str(response.status_code)).inc()
    return response


async def _api_error(request, exc):
    return count(request, JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers))


async def _http_error(request, exc):
    message = {404: "no route %s %s" % (request.method, request.url.path),
               405: "%s is not allowed on %s" % (request.method, request.url.path)}.get(exc.status_code, exc.detail)
    return count(request, _error_response(exc.status_code, message, headers=getattr(exc, "headers", None)))


async def _internal_error(request, exc):
    return count(request, _error_response(500, "internal error: %s" % type(exc).__name__))


class _BearerAuth:
    """Every path but ``/health`` needs ``Authorization: Bearer KEY``
    (compared in constant time); 401 otherwise."""

    def __init__(self, app, api_key):
        self.app = app
        self.expected = ("Bearer " + api_key).encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error_response(401, "a valid API key is needed: Authorization: Bearer KEY",
                                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- the handlers ---------------------------------------------------------------------


class _Handlers:
    def __init__(self, engine, max_body_bytes):
        self.engine = engine
        self.max_body_bytes = max_body_bytes

    def lifespan(self, app):
        engine = self.engine

        class _Lifespan:
            async def __aenter__(self):
                engine.start()

            async def __aexit__(self, *exc):
                await asyncio.get_running_loop().run_in_executor(None, engine.stop)

        return _Lifespan()

    # -- plain GETs

    async def health(self, request):
        engine = self.engine
        if engine.status == "ready":
            return JSONResponse({"status": "ok", "model": engine.config.served_name})
        body = {"status": engine.status}
        if engine.load_error:
            body["error"] = engine.load_error
        return JSONResponse(body, status_code=503)

    async def metrics(self, request):
        return Response(generate_latest(self.engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _model_card(self):
        return {"id": self.engine.config.served_name, "object": "model", "created": self.engine.created,
                "owned_by": "rwkv_cpp"}

    async def models(self, request):
        self._require_ready()
        return count(request, JSONResponse({"object": "list", "data": [self._model_card()]}))

    async def model(self, request):
        self._require_ready()
        check_model_name(request.path_params["model_id"], self.engine.config.served_name)
        return JSONResponse(self._model_card())

    # -- generation

    async def completions(self, request):
        req = await self._read(request, CompletionRequest)
        for name, ok in (("echo", not req.echo), ("suffix", not req.suffix), ("best_of", req.best_of in (None, 1)),
                         ("logprobs", not req.logprobs)):
            if not ok:
                raise APIError(400, "%s is not supported by this server" % name, param=name)
        max_tokens = check_common(req, self.engine.config.limits, COMPLETION_MAX_TOKENS)
        ids = prompt_ids(req.prompt, self.engine.tokenizer, self.engine.model.n_vocab, self.engine.config.limits)
        ticket = Ticket(asyncio.get_running_loop(), "completion", ids, max_tokens=max_tokens,
                        sampling=sampling_params(req))
        return await self._generate(request, req, ticket, _CompletionShape(self._id("cmpl"), self._name()))

    async def chat(self, request):
        req = await self._read(request, ChatRequest)
        if req.logprobs or req.top_logprobs:
            raise APIError(400, "logprobs is not supported by this server", param="logprobs")
        engine = self.engine
        limits = engine.config.limits
        max_tokens = check_common(req, limits, CHAT_MAX_TOKENS, req.max_completion_tokens)
        template = engine.config.template
        try:
            ids = template.render([(m.role, m.text()) for m in req.messages], engine.tokenizer.encode)
        except ValueError as exc:
            raise APIError(400, "messages: %s" % exc, param="messages") from None
        ids = prompt_ids(ids, engine.tokenizer, engine.model.n_vocab, limits, param="messages")
        ticket = Ticket(asyncio.get_running_loop(), "chat", ids, max_tokens=max_tokens,
                        sampling=sampling_params(req, template.stop))
        return await self._generate(request, req, ticket, _ChatShape(self._id("chatcmpl"), self._name()))

    async def embeddings(self, request):
        req = await self._read(request, EmbeddingRequest)
        engine = self.engine
        if req.dimensions is not None:
            raise APIError(400, "dimensions is not supported: the embedding's size is the model's", param="dimensions")
        items = req.input if isinstance(req.input, list) and req.input and not isinstance(req.input[0], int) \
            else [req.input]
        limits = engine.config.limits
        if not items or len(items) > limits.max_inputs:
            raise APIError(400, "input: give 1 to %d inputs" % limits.max_inputs, param="input")
        inputs = [prompt_ids(item, engine.tokenizer, engine.model.n_vocab, limits, param="input") for item in items]
        ticket = Ticket(asyncio.get_running_loop(), "embedding", inputs=inputs)
        engine.submit(ticket)
        event = await self._next_event(request, ticket)
        if event[0] == "error":
            raise event[1]
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
                for i, v in enumerate(event[1])]
        n = sum(len(ids) for ids in inputs)
        body = {"object": "list", "data": data, "model": self._name(),
                "usage": {"prompt_tokens": n, "total_tokens": n}}
        return count(request, JSONResponse(body))

    # -- helpers

    def _name(self):
        return self.engine.config.served_name

    @staticmethod
    def _id(prefix):
        return "%s-%s" % (prefix, base64.b32encode(np.random.bytes(10)).decode("ascii").lower())

    def _require_ready(self):
        if self.engine.status != "ready":
            raise APIError(503, "the model is %s" % ("still loading" if self.engine.status == "loading"
                                                      else "not loaded: %s" % self.engine.load_error),
                           code="model_not_ready", headers={"Retry-After": "1"})

    async def _read(self, request, model_class):
        """The request body checked into ``model_class``."""
        self._require_ready()
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            raise APIError(413, "the body is larger than %d bytes" % self.max_body_bytes, code="body_too_large")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_body_bytes:
                    raise APIError(413, "the body is larger than %d bytes" % self.max_body_bytes,
                                   code="body_too_large")
        except ClientDisconnect:
            raise APIError(400, "the client went away while sending the body") from None
        req = validate(model_class, parse_json(bytes(body)))
        check_model_name(req.model, self._name())
        return req

    async def _next_event(self, request, ticket):
        """The ticket's next event; cancels it if the client goes away."""
        while True:
            try:
                return await asyncio.wait_for(ticket.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.engine.cancel(ticket)
                    return ("done", "cancelled", None)

    async def _generate(self, request, req, ticket, shape):
        self.engine.submit(ticket)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            response = StreamingResponse(self._stream(ticket, shape, include_usage), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return count(request, response)
        pieces = []
        while True:
            event = await self._next_event(request, ticket)
            if event[0] == "text":
                pieces.append(event[1])
            elif event[0] == "error":
                raise event[1]
            else:
                break
        _, reason, usage = event
        if reason == "cancelled":
            return Response(status_code=204)
        return count(request, JSONResponse(shape.whole("".join(pieces), reason, usage)))

    async def _stream(self, ticket, shape, include_usage):
        """The server-sent events of a streamed response."""
        try:
            yield _sse(shape.first())
            while True:
                event = await ticket.events.get()
                if event[0] == "text":
                    yield _sse(shape.piece(event[1]))
                    continue
                if event[0] == "error":
                    yield _sse(event[1].body())
                elif event[1] != "cancelled":
                    yield _sse(shape.last(event[1], event[2]))
                    if include_usage:
                        yield _sse(shape.usage(event[2]))
                break
            yield "data: [DONE]\n\n"
        finally:
            # the client went away (the generator is closed early) or the job ended
            self.engine.cancel(ticket)


def _sse(obj):
    return "data: %s\n\n" % json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _encode_vector(vector, encoding_format):
    vector = np.asarray(vector, dtype="<f4")
    if encoding_format == "base64":
        return base64.b64encode(vector.tobytes()).decode("ascii")
    return vector.tolist()


# -- response shapes ---------------------------------------------------------------------


class _CompletionShape:
    """The bodies of ``/v1/completions`` (``text_completion``)."""

    object = "text_completion"

    def __init__(self, id, model):
        self.id, self.model, self.created = id, model, int(time.time())

    def _body(self, choices, usage=None, obj=None):
        body = {"id": self.id, "object": obj or self.object, "created": self.created, "model": self.model,
                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    def _choice(self, text, reason):
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}

    def whole(self, text, reason, usage):
        return self._body([self._choice(text, reason)], usage)

    def first(self):
        return self._body([self._choice("", None)])

    def piece(self, text):
        return self._body([self._choice(text, None)])

    def last(self, reason, usage):
        return self._body([self._choice("", reason)], usage)

    def usage(self, usage):
        return self._body([], usage)


class _ChatShape(_CompletionShape):
    """The bodies of ``/v1/chat/completions`` (``chat.completion`` and
    ``chat.completion.chunk``)."""

    object = "chat.completion.chunk"

    def whole(self, text, reason, usage):
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": reason}
        return self._body([choice], usage, "chat.completion")

    def _delta(self, delta, reason):
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]

    def first(self):
        return self._body(self._delta({"role": "assistant", "content": ""}, None))

    def piece(self, text):
        return self._body(self._delta({"content": text}, None))

    def last(self, reason, usage):
        return self._body(self._delta({}, reason), usage)
