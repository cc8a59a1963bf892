"""The llama-cpp-python-shaped calls (rwkv_cpp.llama_compat, as Model
methods): their names and arguments, the shape of their results, and their
texts equal to ``Model.generate`` with the same settings (greedy and seeded
sampling, stop strings, max_tokens), streamed or not.  Also
``Model.generate`` taking the sampling settings as keywords and
``Generation.text`` finishing the generation.

The model is the bundled demo (RWKV-4, 20B tokenizer) for real text, so
the stop strings and the chat format meet real line breaks.
"""

import inspect

import pytest

import rwkv_cpp
from rwkv_cpp import llama_compat
from rwkv_cpp.generation import STOP_MAX_TOKENS
from rwkv_cpp.sampling import SamplingParams


@pytest.fixture(scope="module")
def model():
    with rwkv_cpp.Model.default(n_threads=1) as m:
        yield m


def llama_sampling(**changes):
    """The SamplingParams of create_completion's defaults (llama-cpp-python's)."""
    base = dict(temperature=0.8, top_p=0.95, top_k=40, alpha_presence=0.0, alpha_frequency=0.0, alpha_decay=1.0)
    base.update(changes)
    return SamplingParams(**base)


def test_the_names_and_arguments_of_llama_cpp_python():
    for name in ("create_completion", "__call__", "create_chat_completion", "tokenize", "detokenize"):
        assert callable(getattr(rwkv_cpp.Model, name)), name
    params = inspect.signature(llama_compat.create_completion).parameters
    for arg in ("prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream", "echo",
                "presence_penalty", "frequency_penalty"):
        assert arg in params, arg
    assert params["max_tokens"].default == 16
    chat = inspect.signature(llama_compat.create_chat_completion).parameters
    for arg in ("messages", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream"):
        assert arg in chat, arg
    assert list(inspect.signature(rwkv_cpp.Model.tokenize).parameters)[:4] == ["self", "text", "add_bos", "special"]
    generate = inspect.signature(rwkv_cpp.Model.generate).parameters
    for arg in ("temperature", "top_p", "top_k", "stop", "seed"):
        assert arg in generate, arg


def test_completion_shape_and_text_equal_generate(model):
    out = model("ROMEO:", max_tokens=12, temperature=0)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-") and out["model"] == model.path
    assert isinstance(out["created"], int)
    [choice] = out["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    ref = model.generate("ROMEO:", 12, sampling=llama_sampling(temperature=0))
    assert choice["text"] == ref.read() and ref.stop_reason == STOP_MAX_TOKENS
    assert out["usage"] == {"prompt_tokens": len(ref.prompt_tokens), "completion_tokens": 12,
                            "total_tokens": len(ref.prompt_tokens) + 12}
    assert model.create_completion("ROMEO:", max_tokens=12, temperature=0)["choices"][0]["text"] == choice["text"]


def test_seeded_sampling_and_stop_equal_generate(model):
    kwargs = dict(max_tokens=60, temperature=0.9, top_p=0.9, top_k=20, seed=3, stop=["\n\n"])
    out = model.create_completion("JULIET:", **kwargs)
    ref = model.generate("JULIET:", 60, sampling=llama_sampling(temperature=0.9, top_p=0.9, top_k=20, seed=3,
                                                                stop=("\n\n",)))
    assert out["choices"][0]["text"] == ref.read()
    expected = "stop" if ref.stop_reason != STOP_MAX_TOKENS else "length"
    assert out["choices"][0]["finish_reason"] == expected
    # the same settings as generate's keywords
    again = model.generate("JULIET:", 60, sampling=llama_sampling(), temperature=0.9, top_p=0.9, top_k=20, seed=3,
                           stop="\n\n")
    assert again.text == ref.text


def test_stream_chunks_join_to_the_completion(model):
    whole = model("ROMEO:", max_tokens=20, temperature=0, echo=True)
    chunks = list(model("ROMEO:", max_tokens=20, temperature=0, echo=True, stream=True))
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert whole["choices"][0]["text"].startswith("ROMEO:")


def test_chat_completion_is_generate_in_the_rwkv_chat_format(model):
    messages = [{"role": "system", "content": "You speak in verse.\n\nAlways."},
                {"role": "user", "content": "Who art thou?"}]
    prompt = llama_compat.chat_prompt(messages)
    assert prompt == "System: You speak in verse.\nAlways.\n\nUser: Who art thou?\n\nAssistant:"
    out = model.create_chat_completion(messages, max_tokens=40, temperature=0)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    ref = model.generate(prompt, 40, sampling=llama_sampling(temperature=0, stop=("\n\n",)))
    message = out["choices"][0]["message"]
    assert message == {"role": "assistant", "content": ref.read().lstrip()}
    assert out["usage"]["completion_tokens"] == len(ref.tokens)
    chunks = list(model.create_chat_completion(messages, max_tokens=40, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == message["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    with pytest.raises(ValueError, match="role"):
        model.create_chat_completion([{"role": "robot", "content": "x"}])


def test_tokenize_and_detokenize_bytes(model):
    ids = model.tokenize(b"Hello world")
    assert ids == model.tokenize("Hello world") == list(rwkv_cpp.tokenizers.for_model(model).encode("Hello world"))
    assert model.detokenize(ids) == b"Hello world" and isinstance(model.detokenize(ids), bytes)
    # a token holding part of a UTF-8 character still gives its bytes
    ids = model.tokenize("é".encode())
    assert model.detokenize(ids) == "é".encode()


def test_generation_text_finishes_the_generation(model):
    g = model.generate("ROMEO:", max_tokens=5, temperature=0)
    assert g.stop_reason is None and g.text_so_far == ""
    text = g.text
    assert text and g.stop_reason == STOP_MAX_TOKENS and len(g.tokens) == 5 and g.text_so_far == text
    assert model.generate("ROMEO:", max_tokens=5, sampling=SamplingParams(temperature=0)).read() == text


def test_unlimited_max_tokens_runs_to_a_stop(model):
    out = model("ROMEO:", max_tokens=None, temperature=0, stop=["\n"])
    assert out["choices"][0]["finish_reason"] == "stop" and "\n" not in out["choices"][0]["text"]
    with pytest.raises(TypeError):
        model.generate("x", max_tokens=1, temprature=0)  # a misspelt setting is an error, not ignored
