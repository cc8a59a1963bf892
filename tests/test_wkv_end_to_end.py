"""RWKV-5/6/7 through the user-facing layers: the World tokenizer chosen from
the file, generation, chat, perplexity, state files and the command-line
programs, on the small World-vocabulary models of tests/wkv_zoo.py."""

import math
import subprocess
import sys

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import chat as chat_module
from rwkv_cpp import tokenizers
from rwkv_cpp.perplexity import perplexity
from rwkv_cpp.sampling import SamplingParams

from wkv_zoo import VERSIONS

GREEDY = SamplingParams(temperature=0, alpha_presence=0, alpha_frequency=0)


@pytest.fixture(scope="module", params=VERSIONS)
def world_model(request, wkv_zoo):
    with rwkv_cpp.Model(str(wkv_zoo.gguf(f"v{request.param}-world")), n_threads=1) as model:
        yield model


def test_world_tokenizer_is_the_default(world_model):
    assert world_model.tokenizer_name == "world"
    assert tokenizers.for_model(world_model).name == "world"


def test_greedy_generation_equals_direct_evaluation(world_model):
    prompt = "The 世界 is"
    generation = world_model.generate(prompt, max_tokens=12, sampling=GREEDY, stop_at_eos=False)
    text = generation.read()
    world = tokenizers.get("world")
    logits, state = world_model.eval_sequence(world.encode(prompt))
    expected = []
    for _ in range(12):
        token = int(np.argmax(logits[: world.n_vocab]))  # ids the tokenizer cannot decode are banned
        expected.append(token)
        logits, state = world_model.eval(token, state)
    assert generation.tokens == expected
    assert text == world.decode(expected)
    np.testing.assert_allclose(generation.state, state, rtol=0, atol=1e-5)


def test_chat_turn(world_model, tmp_path):
    out, errors = [], []
    tokenizer = tokenizers.for_model(world_model)
    session = chat_module.ChatSession(world_model, tokenizer, chat_module.persona_for(tokenizer.name),
                                      SamplingParams(seed=1, top_p=0.7), 8, str(tmp_path), out.append,
                                      errors.append)
    session.handle("Hello there")
    session.handle("+save first")
    session.handle("+load first")
    assert out[0] == "Assistant:" and errors == []
    assert session.state.shape == (world_model.state_len,)


def test_perplexity_equals_direct_computation(world_model):
    tokens = np.random.default_rng(2).integers(1, world_model.n_vocab, 40)
    state, nll = None, []
    for i in range(len(tokens) - 1):
        logits, state = world_model.eval(int(tokens[i]), state)
        x = logits.astype(np.float64)
        nll.append(x.max() + math.log(np.exp(x - x.max()).sum()) - x[tokens[i + 1]])
    result = perplexity(world_model, tokens, chunk=16)
    assert result.n_tokens == len(tokens) - 1
    assert abs(result.cross_entropy - np.mean(nll)) < 1e-5


def test_state_file_round_trip(world_model, tmp_path):
    logits, state = world_model.eval_sequence([5, 6, 7])
    world_model.save_state(tmp_path / "s.state", state, logits)
    loaded, loaded_logits = world_model.load_state(tmp_path / "s.state", with_logits=True)
    np.testing.assert_array_equal(loaded, state)
    np.testing.assert_array_equal(loaded_logits, logits)


def test_generate_and_chat_programs(wkv_zoo):
    """The command-line programs on an RWKV-7 model (quantized to Q8_0)."""
    path = wkv_zoo.quantized("v7.0-world", "Q8_0")
    run = lambda module, args, stdin=None: subprocess.run(  # noqa: E731
        [sys.executable, "-m", module] + args, input=stdin, capture_output=True, timeout=120)
    gen = run("rwkv_cpp.generate", ["Hello", "--model", str(path), "--max-tokens", "8", "--seed", "1",
                                    "--threads", "1"])
    assert gen.returncode == 0, gen.stderr
    chat = run("rwkv_cpp.chat", ["--model", str(path), "--max-tokens", "6", "--seed", "2", "--threads", "1"],
               stdin=b"Hi!\n+exit\n")
    assert chat.returncode == 0, chat.stderr
    assert f"{path.name} (RWKV-7.0 Q8_0, " in chat.stderr.decode("utf-8")
    assert ", tokenizer world)" in chat.stderr.decode("utf-8")
