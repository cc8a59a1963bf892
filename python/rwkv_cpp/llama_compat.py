"""The calls of llama-cpp-python's ``Llama``, for those who know them:
``create_completion`` (and ``__call__``), ``create_chat_completion``,
``tokenize`` and ``detokenize``, as functions taking a ``Model`` (or a
``Context``); ``rwkv_cpp.Model`` has them as methods.

The results have the OpenAI shape llama-cpp-python returns: a completion is
``{"id", "object": "text_completion", "created", "model", "choices": [{"text",
"index", "logprobs", "finish_reason"}], "usage": {"prompt_tokens",
"completion_tokens", "total_tokens"}}``; with ``stream=True`` an iterator of
chunks of the same shape, each with a piece of the text, the last with the
``finish_reason``.  ``finish_reason`` is ``"length"`` when ``max_tokens``
ended the text, ``"stop"`` at a stop string or the end-of-text token.

Every completion is ``rwkv_cpp.generation.generate`` with the same settings,
so the texts are equal.  The sampling defaults are llama-cpp-python's
(temperature 0.8, top_p 0.95, top_k 40, no penalties); ``presence_penalty``
and ``frequency_penalty`` are the sampler's ``alpha_presence`` and
``alpha_frequency``.  RWKV has no beginning-of-sequence token, so
``tokenize(..., add_bos=True)`` adds none.

A chat is written in the RWKV chat format::

    System: SYSTEM\\n\\nUser: MESSAGE\\n\\nAssistant: REPLY\\n\\nUser: MESSAGE\\n\\nAssistant:

and the reply ends at a blank line (a blank line inside a message would end
its turn, so blank lines in messages become single new lines).
"""

import re
import time
import uuid

from . import tokenizers
from .generation import STOP_MAX_TOKENS, generate
from .sampling import SamplingParams

#: llama-cpp-python's defaults of create_completion
DEFAULT_MAX_TOKENS = 16
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40

#: the speaker of each chat role in the RWKV chat format
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
#: a turn ends at a blank line
TURN_END = "\n\n"


def tokenize(model, text, add_bos=True, special=False):
    """The token ids of ``text`` (``bytes``, as llama-cpp-python takes it,
    or ``str``) with the model's tokenizer.  ``add_bos`` and ``special`` are
    accepted for llama-cpp-python's signature: RWKV tokenizers have no
    beginning-of-sequence token and no special-token syntax."""
    return list(tokenizers.for_model(model).encode(text))


def detokenize(model, tokens, prev_tokens=None, special=False):
    """The bytes of ``tokens`` with the model's tokenizer (``prev_tokens``
    and ``special`` are accepted for llama-cpp-python's signature)."""
    return tokenizers.for_model(model).decode_bytes(list(tokens))


def sampling_params(temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P, top_k=DEFAULT_TOP_K, stop=None,
                    seed=None, presence_penalty=0.0, frequency_penalty=0.0):
    """The ``SamplingParams`` of llama-cpp-python-style arguments."""
    if isinstance(stop, str):
        stop = [stop]
    return SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, stop=tuple(stop or ()),
                          seed=seed, alpha_presence=presence_penalty, alpha_frequency=frequency_penalty,
                          alpha_decay=1.0)


def create_completion(model, prompt, max_tokens=DEFAULT_MAX_TOKENS, temperature=DEFAULT_TEMPERATURE,
                      top_p=DEFAULT_TOP_P, top_k=DEFAULT_TOP_K, stop=None, seed=None, stream=False, echo=False,
                      presence_penalty=0.0, frequency_penalty=0.0, state=None):
    """A completion of ``prompt`` (``str`` or ``bytes``) as llama-cpp-python
    returns it (see the module docstring); ``stream=True`` gives an
    iterator of chunks.  ``max_tokens=None`` (or <= 0) generates until a
    stop (RWKV has no context limit).  ``echo`` puts the prompt before the
    text; ``state`` starts from a state instead of the initial one."""
    sampling = sampling_params(temperature, top_p, top_k, stop, seed, presence_penalty, frequency_penalty)
    generation = generate(model, prompt, _token_limit(max_tokens), sampling, state)
    head = _prompt_text(prompt) if echo else ""
    shape = _Shape("cmpl", "text_completion", model)
    if stream:
        return _stream_completion(shape, generation, head)
    text = head + generation.read()
    return shape.result({"text": text, "index": 0, "logprobs": None,
                         "finish_reason": _finish_reason(generation)}, generation)


def chat_prompt(messages):
    """The RWKV chat-format prompt of OpenAI-style ``messages`` (dicts with
    ``role`` and ``content``), ending with ``Assistant:``."""
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLE_NAMES:
            raise ValueError("message %d: role must be one of %s, got %r" % (i, ", ".join(ROLE_NAMES), role))
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError("message %d: content must be a string" % i)
        turns.append("%s: %s%s" % (ROLE_NAMES[role], _one_turn(content), TURN_END))
    return "".join(turns) + ROLE_NAMES["assistant"] + ":"


def create_chat_completion(model, messages, max_tokens=None, temperature=DEFAULT_TEMPERATURE,
                           top_p=DEFAULT_TOP_P, top_k=DEFAULT_TOP_K, stop=None, seed=None, stream=False,
                           presence_penalty=0.0, frequency_penalty=0.0):
    """The assistant's reply to ``messages`` as llama-cpp-python returns it:
    ``{"choices": [{"message": {"role": "assistant", "content"}, ...}], ...}``
    (``object`` ``"chat.completion"``); with ``stream=True`` chunks with a
    ``delta`` instead of a ``message``.  The reply is the generation after
    ``chat_prompt(messages)``, ending at a blank line (or a ``stop``
    string), without the space that follows ``Assistant:``."""
    stops = [TURN_END] + ([stop] if isinstance(stop, str) else list(stop or ()))
    sampling = sampling_params(temperature, top_p, top_k, stops, seed, presence_penalty, frequency_penalty)
    generation = generate(model, chat_prompt(messages), _token_limit(max_tokens), sampling)
    shape = _Shape("chatcmpl", "chat.completion", model)
    if stream:
        return _stream_chat(shape, generation)
    reply = {"role": "assistant", "content": generation.read().lstrip()}
    return shape.result({"index": 0, "message": reply, "logprobs": None,
                         "finish_reason": _finish_reason(generation)}, generation)


# -- helpers --------------------------------------------------------------------


class _Shape:
    """What every result and chunk of one call shares: id, object, time, model."""

    def __init__(self, prefix, kind, model):
        self.id = "%s-%s" % (prefix, uuid.uuid4().hex)
        self.kind = kind
        self.created = int(time.time())
        self.model = getattr(model, "path", "") or ""

    def chunk(self, choice, kind=None):
        return {"id": self.id, "object": kind or self.kind, "created": self.created, "model": self.model,
                "choices": [choice]}

    def result(self, choice, generation):
        out = self.chunk(choice)
        n_prompt, n_out = len(generation.prompt_tokens), len(generation.tokens)
        out["usage"] = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        return out


def _stream_completion(shape, generation, head):
    if head:
        yield shape.chunk({"text": head, "index": 0, "logprobs": None, "finish_reason": None})
    for piece in generation:
        yield shape.chunk({"text": piece, "index": 0, "logprobs": None, "finish_reason": None})
    yield shape.chunk({"text": "", "index": 0, "logprobs": None, "finish_reason": _finish_reason(generation)})


def _stream_chat(shape, generation):
    kind = "chat.completion.chunk"
    yield shape.chunk({"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}, kind)
    started = False
    for piece in generation:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        if piece:
            yield shape.chunk({"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None},
                              kind)
    yield shape.chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": _finish_reason(generation)},
                      kind)


def _finish_reason(generation):
    return "length" if generation.stop_reason == STOP_MAX_TOKENS else "stop"


def _token_limit(max_tokens):
    """llama-cpp-python's rule: None or <= 0 means no limit (here: until a stop)."""
    if max_tokens is None or max_tokens <= 0:
        return None
    return int(max_tokens)


def _prompt_text(prompt):
    return prompt.decode("utf-8", errors="replace") if isinstance(prompt, bytes) else prompt


def _one_turn(content):
    """A message's text that cannot end its turn early: CR dropped, blank
    lines made single new lines, outer blanks stripped."""
    return re.sub(r"\n\s*\n+", "\n", content.replace("\r", "")).strip()
