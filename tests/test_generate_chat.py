"""Generation, state files and the two command-line programs, end to end on
small random models: a byte-level one (vocabulary 256) and a World one
(vocabulary 65536)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import chat as chat_module
from rwkv_cpp import tokenizers
from rwkv_cpp.generate import STOP_MAX_TOKENS, STOP_STRING, STOP_TOKEN
from rwkv_cpp.sampling import SamplingParams
from rwkv_cpp.state_file import StateFileError

GREEDY = SamplingParams(temperature=0, alpha_presence=0, alpha_frequency=0)


def _convert(path, n_vocab, n_embed, n_layer, seed, tokenizer):
    from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict

    sd = make_rwkv4_state_dict(n_vocab, n_embed, n_layer, seed=seed)
    convert_state_dict(sd, str(path), "FP32", tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_models")
    _convert(root / "bytes.gguf", 256, 32, 2, 1, "bytes")
    _convert(root / "bytes-other.gguf", 256, 32, 2, 2, "bytes")  # same shape, other weights
    _convert(root / "bytes-wide.gguf", 256, 48, 2, 1, "bytes")
    _convert(root / "world.gguf", 65536, 16, 1, 3, "world")
    _convert(root / "none.gguf", 256, 32, 1, 4, "none")
    return root


@pytest.fixture(scope="module")
def byte_model(model_dir):
    with rwkv_cpp.Model(model_dir / "bytes.gguf", n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def world_model(model_dir):
    with rwkv_cpp.Model(model_dir / "world.gguf", n_threads=1) as model:
        yield model


def greedy_reference(model, prompt_ids, n):
    """Greedy tokens by calling eval directly."""
    logits, state = model.eval_sequence(prompt_ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(logits))
        out.append(token)
        logits, state = model.eval(token, state)
    return out, state, logits


# ---------------------------------------------------------------------------
# Model.generate
# ---------------------------------------------------------------------------


def test_greedy_generation_equals_direct_evaluation(byte_model):
    generation = byte_model.generate("Hello", max_tokens=24, sampling=GREEDY)
    pieces = list(generation)
    tokens, state, logits = greedy_reference(byte_model, list(b"Hello"), 24)
    assert generation.tokens == tokens
    assert "".join(pieces) == generation.text == tokenizers.get("bytes").decode(tokens)
    assert generation.stop_reason == STOP_MAX_TOKENS
    np.testing.assert_allclose(generation.state, state, rtol=0, atol=1e-5)
    np.testing.assert_allclose(generation.logits, logits, rtol=0, atol=1e-5)


def test_continuation_equals_one_long_generation(byte_model):
    first = byte_model.generate("Once", max_tokens=10, sampling=GREEDY)
    first.read()
    second = byte_model.generate("", max_tokens=10, sampling=GREEDY, state=first.state, logits=first.logits)
    second.read()
    whole = byte_model.generate("Once", max_tokens=20, sampling=GREEDY)
    whole.read()
    assert first.tokens + second.tokens == whole.tokens
    more = byte_model.generate(" more", max_tokens=3, sampling=GREEDY, state=whole.state)
    assert more.read() is not None and len(more.tokens) == 3


def test_seeded_sampling_repeats(byte_model):
    texts = [byte_model.generate("abc", max_tokens=30, sampling=SamplingParams(seed=5)).read() for _ in range(2)]
    assert texts[0] == texts[1]
    other = byte_model.generate("abc", max_tokens=30, sampling=SamplingParams(seed=6)).read()
    assert other != texts[0]


def test_stop_string_cuts_the_text(byte_model):
    full = byte_model.generate("Hello", max_tokens=30, sampling=GREEDY).read()
    stop = full[10:12]
    cut = full.find(stop)
    generation = byte_model.generate("Hello", max_tokens=30, sampling=dataclass_with(GREEDY, stop=[stop]))
    assert generation.read() == full[:cut]
    assert generation.stop_reason == STOP_STRING
    assert len(generation.tokens) <= 30


def test_stop_token_ends_before_it(byte_model):
    tokens, _, _ = greedy_reference(byte_model, list(b"Hello"), 5)
    generation = byte_model.generate("Hello", max_tokens=30, sampling=dataclass_with(GREEDY, token_stop=[tokens[3]]))
    generation.read()
    assert generation.stop_reason == STOP_TOKEN
    assert generation.tokens == tokens[: tokens.index(tokens[3])]


def test_zero_tokens(byte_model):
    generation = byte_model.generate("Hi", max_tokens=0)
    assert generation.read() == "" and generation.stop_reason == STOP_MAX_TOKENS
    with pytest.raises(ValueError, match="max_tokens"):
        byte_model.generate("Hi", max_tokens=-1)


def test_world_model_streams_valid_pieces(world_model):
    generation = world_model.generate("The 世界 is", max_tokens=40, sampling=SamplingParams(seed=3, top_p=1.0))
    pieces = list(generation)
    tok = tokenizers.get("world")
    assert generation.prompt_tokens == tok.encode("The 世界 is")
    assert "".join(pieces) == tok.decode(generation.tokens)
    assert all(0 < t < tok.n_vocab for t in generation.tokens)  # undecodable ids are banned; 0 stops


def test_world_model_stops_at_end_of_text(world_model):
    logits = np.full(world_model.n_vocab, -10.0, dtype=np.float32)
    logits[0] = 10.0  # end of text is certain
    state = world_model.init_state()
    generation = world_model.generate("", max_tokens=5, state=state, logits=logits, sampling=GREEDY)
    assert generation.read() == "" and generation.stop_reason == STOP_TOKEN
    kept = world_model.generate("", max_tokens=2, state=state, logits=logits, sampling=GREEDY, stop_at_eos=False)
    kept.read()
    assert kept.tokens[0] == 0


def dataclass_with(params, **changes):
    import dataclasses

    return dataclasses.replace(params, **changes)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_empty_prompt_needs_a_state_and_logits(byte_model):
    with pytest.raises(ValueError, match="empty prompt"):
        byte_model.generate("")
    with pytest.raises(ValueError, match="empty prompt"):
        byte_model.generate("", state=byte_model.init_state())


def test_unknown_tokenizer_name(byte_model):
    with pytest.raises(ValueError, match="unknown tokenizer 'klingon'; the names are: world, 20B, bytes"):
        byte_model.generate("Hi", tokenizer="klingon")


def test_tokenizer_of_another_model(byte_model):
    with pytest.raises(ValueError, match="does not belong to this model"):
        byte_model.generate("Hi", tokenizer="world")


def test_model_without_tokenizer(model_dir):
    with rwkv_cpp.Model(model_dir / "none.gguf", n_threads=1) as model:
        with pytest.raises(ValueError, match="records no tokenizer"):
            model.generate("Hi")
        assert model.generate("Hi", max_tokens=2, tokenizer="bytes").read() is not None


def test_invalid_utf8_prompt(byte_model):
    undecodable = b"Hi \xff".decode("utf-8", errors="surrogateescape")
    with pytest.raises(ValueError, match="lone surrogate"):
        byte_model.generate(undecodable)
    generation = byte_model.generate(b"Hi \xff", max_tokens=3, sampling=GREEDY)  # bytes: taken as they are
    assert generation.prompt_tokens == [72, 105, 32, 255]
    generation.read()


# ---------------------------------------------------------------------------
# state files
# ---------------------------------------------------------------------------


def test_state_file_round_trip(byte_model, tmp_path):
    logits, state = byte_model.eval_sequence(list(b"some text"))
    path = tmp_path / "s.state"
    byte_model.save_state(path, state, logits)
    np.testing.assert_array_equal(byte_model.load_state(path), state)
    loaded_state, loaded_logits = byte_model.load_state(path, with_logits=True)
    np.testing.assert_array_equal(loaded_logits, logits)
    byte_model.save_state(path, state)
    assert byte_model.load_state(path, with_logits=True)[1] is None


def test_state_file_of_another_model(byte_model, model_dir, tmp_path):
    path = tmp_path / "wide.state"
    with rwkv_cpp.Model(model_dir / "bytes-wide.gguf", n_threads=1) as wide:
        wide.save_state(path, wide.init_state())
    with pytest.raises(StateFileError, match="saved from another model.*n_embed 48 \\(this model: 32\\)"):
        byte_model.load_state(path)
    path = tmp_path / "other.state"
    with rwkv_cpp.Model(model_dir / "bytes-other.gguf", n_threads=1) as other:
        other.save_state(path, other.init_state())
    with pytest.raises(StateFileError, match="same shape"):
        byte_model.load_state(path)
    assert byte_model.load_state(path, check_fingerprint=False).shape == (byte_model.state_len,)


def test_malformed_state_files(byte_model, tmp_path):
    good = tmp_path / "good.state"
    byte_model.save_state(good, byte_model.init_state())
    data = good.read_bytes()
    cases = {
        "magic": (b"NOTSTATE" + data[8:], "not an rwkv_cpp state file"),
        "truncated": (data[:-4], "bytes of data"),
        "longer": (data + b"\0\0\0\0", "bytes of data"),
        "header": (data[:16] + b"{" * (len(data) - 16), "corrupt header"),
        "empty": (b"", "not an rwkv_cpp state file"),
        "version": (data[:8] + b"\x09" + data[9:], "format 9"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / (name + ".state")
        path.write_bytes(content)
        with pytest.raises(StateFileError, match=message):
            byte_model.load_state(path)
    with pytest.raises(ValueError, match="state must be float32"):
        byte_model.save_state(tmp_path / "bad.state", np.zeros(3, dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        byte_model.load_state(tmp_path / "missing.state")


# ---------------------------------------------------------------------------
# python -m rwkv_cpp.generate
# ---------------------------------------------------------------------------


def run_module(module, args, stdin=b"", cwd=None):
    return subprocess.run([sys.executable, "-m", module] + args, input=stdin, capture_output=True,
                          timeout=120, cwd=cwd)


def test_generate_cli(model_dir):
    args = ["Hello", "--model", str(model_dir / "bytes.gguf"), "--max-tokens", "12", "--temperature", "0",
            "--threads", "1"]
    result = run_module("rwkv_cpp.generate", args)
    assert result.returncode == 0, result.stderr
    with rwkv_cpp.Model(model_dir / "bytes.gguf", n_threads=1) as model:
        expected = model.generate("Hello", max_tokens=12, sampling=SamplingParams(temperature=0)).read()
    assert result.stdout.decode("utf-8") == "Hello" + expected + "\n"


def test_no_model_message(monkeypatch, capsys):
    """Without --model and without a bundled model: a clear message."""
    import argparse
    from rwkv_cpp import _cli
    monkeypatch.setattr(_cli, "default_model_path", lambda: None)
    assert _cli.resolve_model_path(argparse.Namespace(model=None)) is None
    assert "no model: pass --model PATH" in capsys.readouterr().err


def test_generate_cli_errors(model_dir):
    result = run_module("rwkv_cpp.generate", ["Hello", "--model", str(model_dir / "bytes.gguf"),
                                              "--tokenizer", "nope", "--threads", "1"])
    assert result.returncode == 1 and b"unknown tokenizer 'nope'" in result.stderr
    result = run_module("rwkv_cpp.generate", ["Hi", "--model", str(model_dir / "missing.gguf")])
    assert result.returncode == 1 and b"error:" in result.stderr
    result = run_module("rwkv_cpp.generate", [os.fsdecode(b"Hi \xff"), "--model", str(model_dir / "bytes.gguf"),
                                              "--max-tokens", "2", "--threads", "1"])
    assert result.returncode == 0 and b"replaced by U+FFFD" in result.stderr
    assert result.stdout.startswith("Hi \ufffd".encode())


# ---------------------------------------------------------------------------
# python -m rwkv_cpp.chat
# ---------------------------------------------------------------------------


def chat_session(model, tmp_path, max_tokens=16, seed=1):
    out, errors = [], []
    tokenizer = tokenizers.for_model(model)
    session = chat_module.ChatSession(model, tokenizer, chat_module.persona_for(tokenizer.name),
                                      SamplingParams(seed=seed, top_p=0.7), max_tokens, str(tmp_path),
                                      out.append, errors.append)
    return session, out, errors


def test_chat_turns_and_state(byte_model, tmp_path):
    session, out, errors = chat_session(byte_model, tmp_path)
    assert session.state is None  # no intro for byte models
    session.handle("Hello there")
    assert out[0] == "Assistant:" and out[-1] == "\n"
    after_first = session.state.copy()
    session.handle("+save first")
    session.handle("and now?")
    assert not np.array_equal(session.state, after_first)
    session.handle("+load first")
    np.testing.assert_array_equal(session.state, after_first)
    session.handle("+reset")
    assert session.state is None
    assert errors == []


def test_chat_turn_is_the_persona_format(byte_model, tmp_path, monkeypatch):
    session, out, errors = chat_session(byte_model, tmp_path)
    prompts = []
    original = chat_module.generate

    def spy(model, prompt, **kwargs):
        prompts.append((prompt, kwargs["sampling"]))
        return original(model, prompt, **kwargs)

    monkeypatch.setattr(chat_module, "generate", spy)
    session.handle("line one\\n\\n\\nline two -temp=0.5 -top_p=0.2")
    session.handle("+qa Why is the sky blue?")
    session.handle("+i List three colours")
    session.handle("+gen Once upon a time")
    session.handle("++")
    session.handle("+++")
    assert prompts[0][0] == "User: line one\nline two\n\nAssistant:"
    assert (prompts[0][1].temperature, prompts[0][1].top_p, prompts[0][1].stop) == (0.5, 0.2, ("\n\n",))
    assert prompts[1][0] == "\nQ & A\n\nQuestion:\nWhy is the sky blue?\n\nDetailed Expert Answer:\n"
    assert prompts[2][0] == "\nInstruction: List three colours\n\nResponse:"
    assert prompts[3][0] == prompts[4][0] == "\nOnce upon a time"  # ++ retries
    assert prompts[5][0] == ""  # +++ continues
    assert prompts[3][1].seed != prompts[4][1].seed
    assert errors == []


def test_chat_persona_for_20b_models():
    persona = chat_module.persona_for("20B")
    assert (persona.user, persona.bot) == ("Bob", "Alice")
    assert persona.intro.endswith("\n\n") and "Bob: " in persona.intro
    assert persona.turn("hi") == "Bob: hi\n\nAlice:"
    custom = chat_module.persona_for("world", user="Q", bot="A", intro="intro\n\n")
    assert custom.turn("x") == "Q: x\n\nA:" and custom.intro == "intro\n\n"


def test_chat_errors(byte_model, world_model, tmp_path):
    session, out, errors = chat_session(byte_model, tmp_path)
    world_model.save_state(tmp_path / "world.state", world_model.init_state())
    for line in ["+load world", "+load nothing", "+save ../escape", "+frobnicate", "++", "+++",
                 "+gen", "hi -temp=-1", "+save early"]:
        session.handle(line)
    assert len(errors) == 9
    assert "cannot load 'world'" in errors[0] and "another model" in errors[0]
    assert "no saved state 'nothing'" in errors[1]
    assert "state names are" in errors[2]
    assert "unknown command +frobnicate" in errors[3]
    assert "nothing to retry" in errors[4]
    assert "+++ continues a free generation" in errors[5]
    assert "+gen needs an argument" in errors[6]
    assert "temperature must be >= 0" in errors[7]
    assert "nothing to save" in errors[8]
    assert session.handle("+exit") is False


def test_chat_program_over_stdin(model_dir, tmp_path):
    script = "\n".join([
        "Hello, who are you?",
        "+save talk",
        "Tell me more.",
        "+reset",
        "+load talk",
        "+qa What is the capital of France?",
        "+++",
        "++",
        "+help",
        "bad \udcff bytes",
        "+exit",
    ]).encode("utf-8", errors="surrogateescape") + b"\n"
    args = ["--model", str(model_dir / "bytes.gguf"), "--max-tokens", "12", "--seed", "7", "--threads", "1",
            "--state-dir", str(tmp_path)]
    result = run_module("rwkv_cpp.chat", args, stdin=script)
    assert result.returncode == 0, result.stderr
    stdout = result.stdout.decode("utf-8")
    stderr = result.stderr.decode("utf-8")
    assert stdout.startswith("+help lists the commands;")
    assert stderr.startswith("rwkv_cpp chat %s: bytes.gguf (RWKV-4 FP32, 2 layers x 32, tokenizer bytes), kernels "
                             % rwkv_cpp.__version__)
    assert stdout.count("Assistant:") == 3  # two turns and the bad-bytes one
    assert "(saved the conversation to" in stdout and (tmp_path / "talk.state").exists()
    assert "(the conversation was reset)" in stdout
    assert "(loaded the conversation from" in stdout
    assert "+qa QUESTION" in stdout and "peak memory (RSS):" in stdout
    assert "invalid UTF-8 in the input was replaced by U+FFFD" in stderr
    assert "peak memory (RSS):" in stderr
    assert "error" not in stderr
    with rwkv_cpp.Model(model_dir / "bytes.gguf", n_threads=1) as model:
        assert model.load_state(tmp_path / "talk.state", with_logits=True)[1] is not None


def test_chat_program_without_model_uses_the_bundled_one():
    result = run_module("rwkv_cpp.chat", ["--threads", "1", "--max-tokens", "8"], stdin=b"hi\n")
    assert result.returncode == 0, result.stderr
    assert b"rwkv4-shakespeare" in result.stderr
