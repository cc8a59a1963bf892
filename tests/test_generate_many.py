"""Continuous batching (``rwkv_cpp.batching``): ``generate_many`` and the
``Scheduler`` against separate ``generate`` calls with the same settings and
seeds (exact text, tokens and state), the batch bound, cancelling, stop
strings across token boundaries, UTF-8 pieces, and bad input."""

import dataclasses

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import batching, tokenizers
from rwkv_cpp.generation import generate
from rwkv_cpp.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, alpha_presence=0, alpha_frequency=0)


def _convert(path, n_vocab, n_embed, n_layer, seed, tokenizer):
    from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict

    convert_state_dict(make_rwkv4_state_dict(n_vocab, n_embed, n_layer, seed=seed), str(path), "FP32",
                       tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory):
    path = _convert(tmp_path_factory.mktemp("many") / "bytes.gguf", 256, 32, 2, 1, "bytes")
    with rwkv_cpp.Model(path, n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    path = _convert(tmp_path_factory.mktemp("many") / "world.gguf", 65536, 16, 1, 3, "world")
    with rwkv_cpp.Model(path, n_threads=1) as model:
        yield model


class Spy:
    """A model that records every ``eval_batch`` call (its sequence lengths)."""

    def __init__(self, model):
        self._model = model
        self.batches = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def eval_batch(self, sequences, states=None):
        self.batches.append([len(s) for s in sequences])
        return self._model.eval_batch(sequences, states)


class Scripted:
    """A stand-in model over the byte tokenizer whose next token is read
    from a script: the prompt ``[k]`` selects ``SCRIPTS[k]``, the state is
    (script, tokens seen), the logits favour the script's next byte by far."""

    n_vocab = 256
    state_len = 2
    tokenizer_name = "bytes"

    def __init__(self, scripts):
        self.scripts = [list(s) for s in scripts]

    def _row(self, tokens, state):
        script, seen = (tokens[0], -1) if state is None else (int(state[0]), int(state[1]))
        seen += len(tokens)
        logits = np.full(self.n_vocab, -1000.0, dtype=np.float32)
        steps = self.scripts[script]
        logits[steps[seen] if seen < len(steps) else ord("~")] = 0.0
        return logits, np.array([script, seen], dtype=np.float32)

    def eval_batch(self, sequences, states=None):
        states = states if states is not None else [None] * len(sequences)
        rows = [self._row(list(s), st) for s, st in zip(sequences, states)]
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def eval_sequence(self, tokens, state=None):
        return self._row(list(tokens), state)

    def eval(self, token, state=None):
        return self._row([token], state)


def vary(base, rng, n_vocab):
    """Settings of one prompt: a seed and one of several samplers."""
    kind = rng.integers(5)
    params = [dict(), dict(temperature=0), dict(temperature=0.8, top_k=5), dict(top_p=1.0, alpha_frequency=1.0),
              dict(temperature=1.3, top_p=0.5, token_ban=[int(t) for t in rng.integers(n_vocab, size=20)])][kind]
    return dataclasses.replace(base, seed=int(rng.integers(2**31)), **params)


def cross_boundary_stop(model, prompt, n, params):
    """A 2-character stop string that starts in one generated token and ends
    in the next (None when the solo text is too short)."""
    solo = generate(model, prompt, n, params)
    solo.read()
    tokenizer = tokenizers.for_model(model)
    for k in range(len(solo.tokens) // 2, len(solo.tokens)):
        at = len(tokenizer.decode(solo.tokens[:k]))
        if 0 < at < len(solo.text) and tokenizer.decode(solo.tokens[:k + 1])[at - 1:at + 1] == solo.text[at - 1:at + 1]:
            return solo.text[at - 1:at + 1]
    return None


def twenty_cases(model, seed):
    """20 prompts of different lengths, settings, seeds, stop strings and max_tokens."""
    rng = np.random.default_rng(seed)
    words = ["Hello", "a", "The quick brown fox", "é", "0", "ROMEO:", "xyz " * 9, "\n\n", "日本語", "ok"]
    prompts, max_tokens, sampling = [], [], []
    for i in range(20):
        prompts.append(words[i % len(words)] * (1 + i // len(words)))
        max_tokens.append(int(rng.choice([0, 1, 3, 12, 25, 40])))
        params = vary(SamplingParams(), rng, model.n_vocab)
        if i % 4 == 1 and max_tokens[-1] >= 12:
            stop = cross_boundary_stop(model, prompts[-1], max_tokens[-1], params)
            params = dataclasses.replace(params, stop=[stop] if stop else ["\x00never"])
        sampling.append(params)
    return prompts, max_tokens, sampling


@pytest.mark.parametrize("which", ["byte_model", "world_model"])
def test_twenty_prompts_equal_twenty_generate_calls(which, request):
    model = request.getfixturevalue(which)
    prompts, max_tokens, sampling = twenty_cases(model, seed=7)
    solo = [generate(model, p, n, s) for p, n, s in zip(prompts, max_tokens, sampling)]
    expected = [g.read() for g in solo]
    spy = Spy(model)
    assert rwkv_cpp.generate_many(spy, prompts, max_tokens, sampling, max_batch=4) == expected
    assert max(len(b) for b in spy.batches) == 4
    assert any(g.stop_reason == "stop_string" for g in solo)  # the stop strings were hit
    # the same through a Context and the Model method, with other batch sizes
    with model.context(n_threads=1) as ctx:
        assert batching.generate_many(ctx, prompts, max_tokens, sampling, max_batch=20) == expected
    assert model.generate_many(prompts, max_tokens, sampling, max_batch=1) == expected


def test_jobs_equal_generations_token_and_state(world_model):
    prompts, max_tokens, sampling = twenty_cases(world_model, seed=3)
    scheduler = batching.Scheduler(world_model, max_batch=6)
    jobs = [scheduler.submit(tokenizers.get("world").encode(p), max_tokens=n, sampling=s)
            for p, n, s in zip(prompts, max_tokens, sampling)]
    streamed = {job.id: "" for job in jobs}
    while scheduler.has_work:
        for job in scheduler.step():
            streamed[job.id] += job.new_text()
    for job, p, n, s in zip(jobs, prompts, max_tokens, sampling):
        g = generate(world_model, p, n, s)
        text = g.read()
        assert job.finished and streamed[job.id] == job.text == text
        assert job.tokens == g.tokens and job.n_generated == len(g.tokens)
        assert job.finish_reason == {"max_tokens": "length"}.get(g.stop_reason, "stop")
        assert job.n_prompt_tokens == len(g.prompt_tokens)
        np.testing.assert_array_equal(job.state, g.state)
        np.testing.assert_array_equal(job.logits, g.logits)
        logits, state = world_model.eval_sequence(job.prompt_ids)
        np.testing.assert_array_equal(job.prompt_state, state)
        np.testing.assert_array_equal(job.prompt_logits, logits)


def test_continuing_a_finished_job(byte_model):
    scheduler = batching.Scheduler(byte_model)
    first = scheduler.submit("Once", max_tokens=8, sampling=GREEDY)
    while scheduler.has_work:
        scheduler.step()
    more = scheduler.submit([], max_tokens=8, sampling=GREEDY, state=first.state, logits=first.logits)
    while scheduler.has_work:
        scheduler.step()
    whole = generate(byte_model, "Once", 16, GREEDY)
    assert first.text + more.text == whole.read()
    np.testing.assert_array_equal(more.state, whole.state)


def test_finished_jobs_free_their_places_at_once(byte_model):
    spy = Spy(byte_model)
    scheduler = batching.Scheduler(spy, max_batch=2)
    short = scheduler.submit("ab", max_tokens=1, sampling=GREEDY)
    long = scheduler.submit("cd", max_tokens=6, sampling=GREEDY)
    third = scheduler.submit("efg", max_tokens=2, sampling=GREEDY)
    assert scheduler.waiting == [short, long, third] and scheduler.active == []
    assert set(scheduler.step()) == {short, long}  # both prompts in one evaluation
    assert spy.batches[-1] == [2, 2] and scheduler.waiting == [third]
    assert scheduler.step() == [short, long]       # short's token is evaluated: it ends
    assert short.finished and short.finish_reason == "length" and spy.batches[-1] == [1, 1]
    assert scheduler.active == [long] and scheduler.waiting == [third]
    scheduler.step()                                # third's whole prompt joins long's token
    assert spy.batches[-1] == [1, 3] and scheduler.active == [long, third]
    while scheduler.has_work:
        assert len(scheduler.active) <= 2
        scheduler.step()
    assert [j.finish_reason for j in (short, long, third)] == ["length"] * 3
    assert scheduler.step() == []


def test_cancel_frees_the_place_at_the_next_step(byte_model):
    scheduler = batching.Scheduler(byte_model, max_batch=2)
    jobs = [scheduler.submit(p, max_tokens=50, sampling=GREEDY) for p in ("one", "two", "three", "four")]
    scheduler.step()
    scheduler.step()
    scheduler.cancel(jobs[0])   # active
    scheduler.cancel(jobs[3])   # waiting
    assert not jobs[0].finished and scheduler.active == jobs[:2]
    progressed = scheduler.step()
    assert jobs[0] in progressed and jobs[3] in progressed
    assert jobs[0].finish_reason == jobs[3].finish_reason == "cancelled"
    assert scheduler.active == [jobs[1], jobs[2]] and scheduler.waiting == []
    assert jobs[3].n_generated == 0 and jobs[0].n_generated == 2
    assert jobs[0].new_text() == jobs[0].text  # what it made before the cancel
    while scheduler.has_work:
        scheduler.step()
    assert jobs[1].text == generate(byte_model, "two", 50, GREEDY).read()
    scheduler.cancel(jobs[1])   # finished: nothing happens
    assert scheduler.step() == [] and jobs[1].finish_reason == "length"


def run_pieces(model, script, **kwargs):
    """Every job's new_text() after each step."""
    scheduler = batching.Scheduler(model, max_batch=3)
    job = scheduler.submit([script], sampling=kwargs.pop("sampling", GREEDY), **kwargs)
    pieces = []
    while scheduler.has_work:
        scheduler.step()
        pieces.append(job.new_text())
    return job, pieces


def test_stop_strings_across_token_boundaries():
    model = Scripted([b"abcSTOPdef", b"abSTxSTOP", b"__ST", b"xyzST"])
    job, pieces = run_pieces(model, 0, max_tokens=20, sampling=dataclasses.replace(GREEDY, stop=["STOP"]))
    assert "".join(pieces) == job.text == "abc" and job.finish_reason == "stop"
    assert pieces[:5] == ["a", "b", "c", "", ""]  # S, T held back: they may start STOP
    assert job.tokens == list(b"abcSTOP")           # the stop string's tokens are generated and evaluated
    job, pieces = run_pieces(model, 1, max_tokens=20, sampling=dataclasses.replace(GREEDY, stop=["STOP"]))
    assert "".join(pieces) == "abSTx" and pieces[4] == "STx"
    job, pieces = run_pieces(model, 2, max_tokens=4, sampling=dataclasses.replace(GREEDY, stop=["STOP", "T_"]))
    assert "".join(pieces) == "__ST" and job.finish_reason == "length"  # a held tail is given at the end
    stops = dataclasses.replace(GREEDY, stop=["zST"])
    job, _ = run_pieces(model, 3, max_tokens=10, sampling=stops)
    assert job.text == "xy" == generate(model, bytes([3]), 10, stops, tokenizer="bytes").read()


def test_multibyte_characters_are_never_sent_half():
    text = "h€llo ü 😀 ok"
    model = Scripted([text.encode("utf-8"), b"ab\xe2\x82"])
    job, pieces = run_pieces(model, 0, max_tokens=len(text.encode("utf-8")))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert pieces[1:4] == ["", "", "€"]  # 3 bytes, the character once complete
    job, pieces = run_pieces(model, 1, max_tokens=4)  # cut inside a character: U+FFFD at the end, as generate
    assert "".join(pieces) == "ab\ufffd" == generate(model, bytes([1]), 4, GREEDY, tokenizer="bytes").read()


def test_stop_tokens_and_end_of_text(world_model):
    scheduler = batching.Scheduler(world_model)
    solo = generate(world_model, "Hi", 10, GREEDY)
    solo.read()
    stop_token = solo.tokens[3]
    params = dataclasses.replace(GREEDY, token_stop=[stop_token])
    job = scheduler.submit("Hi", max_tokens=10, sampling=params)
    while scheduler.has_work:
        scheduler.step()
    cut = generate(world_model, "Hi", 10, params)
    assert job.text == cut.read() and job.tokens == cut.tokens and job.finish_reason == "stop"
    assert job.stop_reason == cut.stop_reason == "stop_token"
    np.testing.assert_array_equal(job.state, cut.state)


def test_bad_inputs_are_clear_errors(byte_model):
    spy = Spy(byte_model)
    with pytest.raises(ValueError, match="no prompts"):
        rwkv_cpp.generate_many(spy, [])
    with pytest.raises(TypeError, match="list of prompts"):
        rwkv_cpp.generate_many(spy, "one prompt")
    with pytest.raises(ValueError, match="sampling has 2 items for 3 prompts"):
        rwkv_cpp.generate_many(spy, ["a", "b", "c"], sampling=[GREEDY, GREEDY])
    with pytest.raises(ValueError, match="max_tokens has 1 items for 2 prompts"):
        rwkv_cpp.generate_many(spy, ["a", "b"], max_tokens=[3])
    with pytest.raises(TypeError, match="sampling must be"):
        rwkv_cpp.generate_many(spy, ["a", "b"], sampling={"temperature": 0})
    with pytest.raises(TypeError, match="sampling must be a SamplingParams"):
        rwkv_cpp.generate_many(spy, ["a", "b"], sampling=[GREEDY, 0.5])
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        rwkv_cpp.generate_many(spy, ["a", "b"], max_tokens=[3, -1])
    with pytest.raises(TypeError, match="max_tokens must be"):
        rwkv_cpp.generate_many(spy, ["a"], max_tokens=2.5)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=2)
    broken = dataclasses.replace(GREEDY)
    broken.top_p = 2  # changed after construction: checked again on submit
    with pytest.raises(ValueError, match="top_p"):
        rwkv_cpp.generate_many(spy, ["a", "b"], sampling=[GREEDY, broken])
    with pytest.raises(ValueError, match="bans every token"):
        rwkv_cpp.generate_many(spy, ["a"], sampling=SamplingParams(token_ban=range(256)))
    with pytest.raises(ValueError, match="beyond the model's vocabulary"):
        rwkv_cpp.generate_many(spy, ["a", [1, 2, 256]])
    with pytest.raises(ValueError, match=">= 0"):
        rwkv_cpp.generate_many(spy, [[1, -2]])
    with pytest.raises(TypeError, match="flat sequence of int"):
        rwkv_cpp.generate_many(spy, [[[1, 2]], [1.5]])
    with pytest.raises(ValueError, match="max_batch"):
        rwkv_cpp.generate_many(spy, ["a"], max_batch=0)
    assert spy.batches == []  # every check before the first evaluation
    scheduler = batching.Scheduler(byte_model)
    with pytest.raises(ValueError, match="empty prompt"):
        scheduler.submit([], max_tokens=3)
    with pytest.raises(ValueError, match="empty prompt"):
        scheduler.submit("", max_tokens=3, state=byte_model.init_state())
    with pytest.raises(ValueError, match="state has 3 values"):
        scheduler.submit("a", max_tokens=3, state=np.zeros(3))
    with pytest.raises(ValueError, match="logits has 5 values"):
        scheduler.submit([], max_tokens=3, state=byte_model.init_state(), logits=np.zeros(5))
    assert scheduler.waiting == [] and not scheduler.has_work


def test_demo_model_texts(tmp_path):
    """The bundled Shakespeare model (20B tokenizer, real text), stopping at new lines."""
    with rwkv_cpp.Model.default(n_threads=1) as model:
        prompts = ["ROMEO:", "JULIET:\nO ", "First Citizen:\nBefore we proceed", "KING"]
        sampling = [SamplingParams(seed=s, stop=["\n\n"] if s % 2 else ()) for s in range(4)]
        expected = [model.generate(p, 24, s).read() for p, s in zip(prompts, sampling)]
        assert model.generate_many(prompts, 24, sampling, max_batch=3) == expected


def test_a_failed_evaluation_leaves_the_jobs_as_they_were(byte_model):
    """A step whose eval_batch raises changes no job; the next step goes on."""

    class FailOnce(Spy):
        fail = False

        def eval_batch(self, sequences, states=None):
            if self.fail:
                self.fail = False
                raise rwkv_cpp.ComputeError(0, "injected")
            return super().eval_batch(sequences, states)

    model = FailOnce(byte_model)
    scheduler = batching.Scheduler(model, max_batch=2)
    jobs = [scheduler.submit(p, max_tokens=9, sampling=SamplingParams(seed=i)) for i, p in enumerate(("ab", "cde"))]
    scheduler.step()
    model.fail = True
    with pytest.raises(rwkv_cpp.ComputeError, match="injected"):
        scheduler.step()
    while scheduler.has_work:
        scheduler.step()
    for i, (job, p) in enumerate(zip(jobs, ("ab", "cde"))):
        assert job.text == generate(byte_model, p, 9, SamplingParams(seed=i)).read()


def test_one_step_at_a_time_while_other_threads_submit(byte_model):
    import threading

    class Blocking(Spy):
        def __init__(self, model):
            super().__init__(model)
            self.inside, self.go_on = threading.Event(), threading.Event()

        def eval_batch(self, sequences, states=None):
            self.inside.set()
            self.go_on.wait(30)
            return super().eval_batch(sequences, states)

    model = Blocking(byte_model)
    scheduler = batching.Scheduler(model)
    first = scheduler.submit("ab", max_tokens=3, sampling=GREEDY)
    worker = threading.Thread(target=scheduler.step)
    worker.start()
    assert model.inside.wait(30)
    with pytest.raises(RuntimeError, match="one step at a time"):
        scheduler.step()
    second = scheduler.submit("cd", max_tokens=3, sampling=GREEDY)  # from this thread, mid-step
    scheduler.cancel(first)
    model.go_on.set()
    worker.join(30)
    assert scheduler.waiting == [second] and first.n_generated == 1
    scheduler.step()
    assert first.finish_reason == "cancelled" and scheduler.active == [second]
