"""The OpenAI request schema, checked at the edge: pydantic models of the
request bodies, their translation into what the scheduler runs (token ids,
``SamplingParams``, a token limit), the chat template, and the
OpenAI-shaped error.

Every check that a request can fail raises ``APIError`` (HTTP status,
message, ``param``, ``code``), which the app turns into the body
``{"error": {"message", "type", "param", "code"}}``; nothing a client sends
reaches the C library unchecked.

Sampling, OpenAI field -> ``SamplingParams`` (``rwkv_cpp.sampling``):
``temperature`` (default 1) -> temperature, ``top_p`` (default 1) -> top_p,
``top_k`` (extension, default 0 = off) -> top_k, ``presence_penalty`` /
``frequency_penalty`` (default 0) -> alpha_presence / alpha_frequency,
``penalty_decay`` (extension, default 1: OpenAI's penalties do not decay)
-> alpha_decay, ``seed`` -> seed, ``stop`` -> stop (plus the chat
template's).  ``Model.generate`` with the same ``SamplingParams`` gives the
same text.
"""

import json
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..sampling import SamplingParams


class APIError(Exception):
    """A request the server refuses: ``status`` and an OpenAI error body."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
             429: "rate_limit_error", 503: "server_error"}

    def __init__(self, status, message, *, param=None, code=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self):
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status, message, param=None, code=None):
    return {"error": {"message": message, "type": APIError.TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


# -- limits -------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_prompt_tokens: int = 4096
    max_tokens: int = 2048
    max_stop: int = 8
    max_stop_chars: int = 256
    max_inputs: int = 64  # embedding inputs per request


# -- the request bodies ---------------------------------------------------------

_STRICT = ConfigDict(extra="ignore", strict=True)
Float = float
TokenIds = List[int]


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _Sampling(BaseModel):
    """The fields completions and chat share."""

    model_config = _STRICT
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0)
    temperature: Optional[Float] = Field(None, ge=0, le=100)
    top_p: Optional[Float] = Field(None, ge=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    presence_penalty: Optional[Float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[Float] = Field(None, ge=-2, le=2)
    penalty_decay: Optional[Float] = Field(None, ge=0, le=1)
    stop: Union[None, str, List[str]] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = Field(None, ge=-(2 ** 63), lt=2 ** 64)
    n: Optional[int] = Field(1, ge=1)
    user: Optional[str] = None


class CompletionRequest(_Sampling):
    prompt: Union[str, List[str], TokenIds, List[TokenIds]]
    logprobs: Optional[int] = Field(None, ge=0)
    echo: Optional[bool] = False
    best_of: Optional[int] = Field(None, ge=1)
    suffix: Optional[str] = None


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[TextPart]]
    name: Optional[str] = None

    def text(self):
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: List[Message] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = None


class EmbeddingRequest(BaseModel):
    model_config = _STRICT
    model: Optional[str] = None
    input: Union[str, List[str], TokenIds, List[TokenIds]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None


# -- parsing ----------------------------------------------------------------------


def _no_constants(name):
    raise ValueError("%s is not valid JSON" % name)


def parse_json(body):
    """The JSON object of a request body (400 otherwise)."""
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise APIError(400, "the body is not valid JSON: %s" % exc, code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object, got %s" % type(data).__name__, code="invalid_json")
    return data


def validate(cls, data):
    """``cls`` (a request model) from a JSON object (400 naming the field)."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, "%s: %s" % (param or "body", first["msg"]), param=param) from None
    except RecursionError:
        raise APIError(400, "the body is nested too deeply") from None


def check_model_name(requested, served):
    if requested is not None and requested != served:
        raise APIError(400, "the model %r is not served here; this server runs %r" % (requested, served),
                       param="model", code="model_not_found")


def sampling_params(req, extra_stop=()):
    """``SamplingParams`` of a completion or chat request."""
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    seed = None if req.seed is None else req.seed % 2 ** 64
    try:
        return SamplingParams(
            temperature=1.0 if req.temperature is None else float(req.temperature),
            top_p=1.0 if req.top_p is None else float(req.top_p),
            top_k=req.top_k or 0,
            alpha_presence=float(req.presence_penalty or 0.0),
            alpha_frequency=float(req.frequency_penalty or 0.0),
            alpha_decay=1.0 if req.penalty_decay is None else float(req.penalty_decay),
            stop=tuple(stops) + tuple(s for s in extra_stop if s not in stops),
            seed=seed)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


def check_common(req, limits, default_max_tokens, max_tokens=None):
    """The token limit of a request, after the checks of the fields no
    endpoint supports beyond their defaults."""
    if req.n not in (None, 1):
        raise APIError(400, "n must be 1: this server returns one choice per request", param="n")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > limits.max_stop:
        raise APIError(400, "at most %d stop strings" % limits.max_stop, param="stop")
    if any(not s or len(s) > limits.max_stop_chars for s in stops):
        raise APIError(400, "stop strings must have 1 to %d characters" % limits.max_stop_chars, param="stop")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "penalty_decay"):
        value = getattr(req, name)
        if value is not None and not math.isfinite(value):
            raise APIError(400, "%s must be a finite number" % name, param=name)
    n = req.max_tokens if max_tokens is None else max_tokens
    n = default_max_tokens if n is None else n
    if n > limits.max_tokens:
        raise APIError(400, "max_tokens is %d; this server allows at most %d" % (n, limits.max_tokens),
                       param="max_tokens")
    return min(n, limits.max_tokens)


def prompt_ids(prompt, tokenizer, n_vocab, limits, param="prompt"):
    """Token ids of one prompt: a string, or a list of token ids (checked
    against the vocabulary)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        raise APIError(400, "%s: one prompt per request (a string or a list of token ids)" % param, param=param)
    if isinstance(prompt, str):
        try:
            ids = tokenizer.encode(prompt)
        except ValueError as exc:
            raise APIError(400, "%s: %s" % (param, exc), param=param) from None
    else:
        ids = list(prompt)
        bad = [t for t in ids if not 0 <= t < n_vocab]
        if bad:
            raise APIError(400, "%s: token id %d is outside the vocabulary (0..%d)" % (param, bad[0], n_vocab - 1),
                           param=param)
    if not ids:
        raise APIError(400, "%s is empty: give at least one token of text to continue" % param, param=param)
    if len(ids) > limits.max_prompt_tokens:
        raise APIError(400, "%s has %d tokens; this server allows at most %d"
                       % (param, len(ids), limits.max_prompt_tokens), param=param)
    return ids


# -- chat ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTemplate:
    """How messages become tokens.

    Each message is rendered as the text ``roles[role].format(content=...)``
    and tokenized on its own; an assistant message is preceded by
    ``assistant_prefix`` (tokenized on its own too), and the prompt ends with
    ``assistant_prefix``, after which the model writes the reply.  Because
    every piece is tokenized separately, the tokens of a conversation's
    history are the same in every later request, so the state cached after a
    turn is found again (``cache.py``).  Contents are stripped of surrounding
    whitespace and runs of blank lines become one newline (a blank line ends
    a turn).  ``stop``: strings that end a reply, besides the request's.
    ``developer`` messages are rendered as ``system`` ones.

    The default is the RWKV chat format::

        User: What is 1+1?\\n\\nAssistant: 2\\n\\nUser: And 2+2?\\n\\nAssistant:
    """

    roles: Dict[str, str] = field(default_factory=lambda: {
        "system": "System: {content}\n\n", "user": "User: {content}\n\n", "assistant": " {content}\n\n"})
    assistant_prefix: str = "Assistant:"
    stop: Tuple[str, ...] = ("\n\n",)

    @classmethod
    def from_file(cls, path):
        """A template from a JSON file with the keys ``roles`` (an object of
        ``system``, ``user`` and ``assistant`` format strings, each holding
        ``{content}``), ``assistant_prefix`` and ``stop`` (a list)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or set(data) - {"roles", "assistant_prefix", "stop"}:
            raise ValueError("%s: a chat template is an object with the keys roles, assistant_prefix, stop" % path)
        default = cls()
        if not isinstance(data.get("roles", {}), dict) or not isinstance(data.get("stop", []), list):
            raise ValueError("%s: roles must be an object and stop a list" % path)
        roles = dict(default.roles, **data.get("roles", {}))
        template = cls(roles=roles, assistant_prefix=data.get("assistant_prefix", default.assistant_prefix),
                       stop=tuple(data.get("stop", default.stop)))
        template.check(path)
        return template

    def check(self, where="the chat template"):
        for role in ("system", "user", "assistant"):
            text = self.roles.get(role)
            if not isinstance(text, str) or "{content}" not in text:
                raise ValueError("%s: roles.%s must be a string holding {content}" % (where, role))
            try:
                text.format(content="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError("%s: roles.%s is not a valid format string: %s" % (where, role, exc)) from None
        if not isinstance(self.assistant_prefix, str) or not self.assistant_prefix:
            raise ValueError("%s: assistant_prefix must be a non-empty string" % where)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError("%s: stop must be a list of non-empty strings" % where)

    def message_pieces(self, role, content):
        """The texts, each tokenized on its own, of one message."""
        role = "system" if role == "developer" else role
        body = self.roles[role].format(content=clean_content(content))
        return [self.assistant_prefix, body] if role == "assistant" else [body]

    def render(self, messages, encode):
        """Token ids of a conversation followed by the assistant prefix."""
        ids = []
        for role, content in messages:
            for piece in self.message_pieces(role, content):
                ids += encode(piece)
        return ids + encode(self.assistant_prefix)

    def reply_ids(self, reply, encode):
        """Token ids that a reply adds to the history of the next request
        (after the assistant prefix that ended this prompt)."""
        return encode(self.message_pieces("assistant", reply)[1])


def clean_content(text):
    """``text`` stripped, with each run of blank lines made one newline."""
    return _BLANK_LINES.sub("\n", text.strip())


_BLANK_LINES = re.compile(r"\n(?:[ \t\r]*\n)+")
