"""Model and Context, the Python objects of rwkv.h's two C objects: lifetime,
several contexts of one model, thread safety, and parallel evaluation on
Python threads (the evaluation calls release the GIL)."""

import gc
import os
import threading
import time
import weakref

import numpy as np
import pytest

import rwkv_cpp
from conftest import SMALLEST
from rwkv_cpp import embedding, state_file
from rwkv_cpp.generate import generate
from rwkv_cpp.sampling import SamplingParams


@pytest.fixture(scope="module")
def path(zoo):
    return str(zoo.safetensors_gguf(SMALLEST, "FP32"))


@pytest.fixture(scope="module")
def model(path):
    with rwkv_cpp.Model(path, n_threads=1) as m:
        yield m


def tokens(n, seed=0, n_vocab=256):
    return np.random.default_rng(seed).integers(0, n_vocab, n)


# -- lifetime -------------------------------------------------------------------


def test_context_close_is_idempotent(model):
    ctx = model.context(n_threads=1)
    assert isinstance(ctx, rwkv_cpp.Context) and not ctx.closed and ctx.n_threads == 1
    ctx.close()
    ctx.close()
    assert ctx.closed
    with pytest.raises(rwkv_cpp.InvalidArgumentError, match="closed"):
        ctx.eval(1)
    with model.context(n_threads=1) as ctx2:
        ctx2.eval(1)
    assert ctx2.closed
    assert not model.closed  # closing a context leaves the model open


def test_context_constructor_and_bad_threads(model):
    with rwkv_cpp.Context(model, 1) as ctx:
        assert ctx.model is model
    with pytest.raises(rwkv_cpp.InvalidArgumentError):
        model.context(n_threads=0)
    with pytest.raises(rwkv_cpp.InvalidArgumentError, match="exceeds"):
        model.context(n_threads=100000)


def test_context_shows_the_model_shape(model):
    with model.context(n_threads=1) as ctx:
        for name in ("n_vocab", "n_embed", "n_layer", "version", "tokenizer_name", "type", "state_len", "path"):
            assert getattr(ctx, name) == getattr(model, name)
        np.testing.assert_array_equal(ctx.init_state(), model.init_state())
        assert "n_threads=1" in repr(ctx)


def test_model_close_closes_its_contexts(path):
    model = rwkv_cpp.Model(path, n_threads=1)
    a, b = model.context(n_threads=1), model.context(n_threads=1)
    b.close()
    model.close()
    model.close()
    assert model.closed and a.closed and b.closed
    with pytest.raises(rwkv_cpp.InvalidArgumentError, match="closed"):
        a.eval(1)
    with pytest.raises(rwkv_cpp.InvalidArgumentError, match="closed"):
        model.context(n_threads=1)
    with pytest.raises(rwkv_cpp.InvalidArgumentError, match="closed"):
        model.init_state()


def test_context_keeps_its_model_alive(path, model):
    expected, _ = model.eval_sequence(tokens(9))
    ctx = rwkv_cpp.Model(path, n_threads=1).context(n_threads=1)  # no other reference to the model
    gc.collect()
    logits, _ = ctx.eval_sequence(tokens(9))
    np.testing.assert_array_equal(logits, expected)
    ctx.close()


def test_reference_cycle_is_collected(path):
    """A model and a context in one garbage cycle: both freed, the context
    first, whatever order the collector finalises them in."""
    model = rwkv_cpp.Model(path, n_threads=1)
    ctx = model.context(n_threads=1)
    model.keep = ctx  # model -> ctx -> model
    refs = weakref.ref(model), weakref.ref(ctx)
    del model, ctx
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


# -- several contexts, one model -------------------------------------------------


def test_contexts_give_the_default_context_results(model):
    seq = tokens(40, seed=1)
    expected_logits, expected_state = model.eval_sequence(seq)
    with model.context(n_threads=1) as a, model.context(n_threads=2) as b:
        for ctx in (a, b):
            logits, state = ctx.eval_sequence(seq)
            np.testing.assert_array_equal(logits, expected_logits)
            np.testing.assert_array_equal(state, expected_state)
        # a state is plain data: continue on another context
        _, half = a.eval_sequence(seq[:17])
        logits, state = b.eval_sequence(seq[17:], half)
        np.testing.assert_array_equal(logits, expected_logits)
        np.testing.assert_array_equal(state, expected_state)
        logits, _ = a.eval(int(seq[0]))
        np.testing.assert_array_equal(logits, model.eval(int(seq[0]))[0])


def test_context_refuses_concurrent_use(model):
    with model.context(n_threads=1) as ctx:
        ctx._busy.acquire()  # as while another thread evaluates on it
        try:
            with pytest.raises(RuntimeError, match="one thread at a time"):
                ctx.eval(1)
        finally:
            ctx._busy.release()
        ctx.eval(1)


def run_threads(jobs):
    """Runs each job on its own thread, started together; their results."""
    results = [None] * len(jobs)
    errors = []
    start = threading.Barrier(len(jobs))

    def run(i):
        try:
            start.wait()
            results[i] = jobs[i]()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_default_context_is_safe_from_threads(model):
    """Model.eval_sequence from several threads: serialised by the model's
    lock, each result that of a lone call."""
    seqs = [tokens(50, seed=s) for s in range(4)]
    expected = [model.eval_sequence(s)[0] for s in seqs]
    results = run_threads([lambda s=s: model.eval_sequence(s)[0] for s in seqs])
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


# -- the layers above take a context ----------------------------------------------


def test_functions_take_a_context(tmp_path):
    with rwkv_cpp.Model.default(n_threads=1) as model, model.context(n_threads=1) as ctx:
        greedy = SamplingParams(temperature=0)
        a = model.generate("ROMEO:", max_tokens=8, sampling=greedy)
        b = generate(ctx, "ROMEO:", max_tokens=8, sampling=greedy)
        assert b.read() == a.read() and b.tokens == a.tokens
        np.testing.assert_array_equal(b.state, a.state)
        np.testing.assert_array_equal(embedding.embed(ctx, "To be, or not to be"),
                                      model.embed("To be, or not to be"))
        state_file.save(tmp_path / "ctx.state", ctx, b.state, b.logits)
        state, logits = model.load_state(tmp_path / "ctx.state", with_logits=True)
        np.testing.assert_array_equal(state, a.state)
        np.testing.assert_array_equal(logits, a.logits)


# -- parallel evaluation ------------------------------------------------------------


def _cpus():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.fixture(scope="module")
def busy_model(tmp_path_factory):
    """An RWKV-4 of 6 layers of 256 channels (FP16): one eval_sequence of
    PARALLEL_TOKENS takes about half a second on one thread, and the weights
    (10 MB) fit in the cache, so two threads do not wait on memory."""
    from rwkv_cpp.convert import convert_state_dict
    from rwkv_cpp.convert.random_model import make_rwkv4_state_dict

    path = tmp_path_factory.mktemp("busy") / "d256_l6.gguf"
    convert_state_dict(make_rwkv4_state_dict(1000, 256, 6, seed=7), str(path), out_type="FP16")
    with rwkv_cpp.Model(str(path), n_threads=1) as model:
        yield model


PARALLEL_TOKENS = 3072
PARALLEL_BOUND = 0.7   # wall time of two threads / the same work done serially
PARALLEL_ATTEMPTS = 5  # the machine may be shared: the best of a few attempts


@pytest.mark.skipif(_cpus() < 2, reason="needs 2 CPUs to run two contexts in parallel")
def test_two_contexts_run_in_parallel(busy_model):
    """Two contexts of one model, one compute thread each, on two Python
    threads: finished in at most 0.7x the serial wall time (the GIL is
    released during evaluation), with the serial run's logits and states."""
    seqs = [tokens(PARALLEL_TOKENS, seed=s, n_vocab=1000) for s in (1, 2)]
    with busy_model.context(n_threads=1) as a, busy_model.context(n_threads=1) as b:
        jobs = [lambda: a.eval_sequence(seqs[0]), lambda: b.eval_sequence(seqs[1])]
        for job in jobs:  # build the graphs before timing
            job()
        ratios = []
        for _ in range(PARALLEL_ATTEMPTS):
            start = time.perf_counter()
            serial = [job() for job in jobs]
            serial_time = time.perf_counter() - start
            start = time.perf_counter()
            parallel = run_threads(jobs)
            parallel_time = time.perf_counter() - start
            for (ls, ss), (lp, sp) in zip(serial, parallel):
                np.testing.assert_array_equal(lp, ls)
                np.testing.assert_array_equal(sp, ss)
            ratios.append(parallel_time / serial_time)
            if ratios[-1] <= PARALLEL_BOUND:
                break
    assert min(ratios) <= PARALLEL_BOUND, "parallel / serial wall time: %s (serial %.2f s)" % (
        ", ".join("%.2f" % r for r in ratios), serial_time)
