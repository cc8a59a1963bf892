"""Sequence mode (eval_sequence) against token-by-token mode (eval), state
handling, and thread-count independence, mostly on FP32 files.

Tolerances:
- sequence vs token by token: SEQUENCE_TOL (1e-5) on the last logits
  (max-abs) and on the state: x_prev and pp by max-abs, aa and bb by
  max |d| / max(1, |ref|) (they grow with the sequence length).  Both modes
  compute the same float32 maths; only summation orders of the matrix
  products differ.
- 1 vs 2 threads: THREADS_TOL (1e-6), same measures.
"""

import numpy as np
import pytest

import reference_rwkv4 as ref
from conftest import (
    CHECKPOINTS,
    SMALLEST,
    TEST_THREADS,
    import_rwkv_cpp,
    parity_tokens,
    run_ours,
)

SEQUENCE_TOL = 1e-5
THREADS_TOL = 1e-6
SEQUENCE_LENGTHS = [1, 7, 64, 512, 2000]
LONGEST = max(SEQUENCE_LENGTHS)


def random_tokens(n_vocab, n, seed):
    return np.random.default_rng(seed).integers(0, n_vocab, size=n)


def assert_close(shape, actual, expected, tol, what):
    """actual/expected: (logits, state).  Raises with every error in the message."""
    logits_err = ref.max_abs_error(actual[0], expected[0])
    errors = {"logits": logits_err, **ref.state_errors(shape, actual[1], expected[1])}
    assert max(errors.values()) <= tol, f"{what}: " + ", ".join(
        f"{kind} {err:.3g}" for kind, err in errors.items()
    )


@pytest.fixture(scope="module")
def small(zoo):
    """The smallest model's FP32 file, open, with its shape."""
    rwkv_cpp = import_rwkv_cpp()
    with rwkv_cpp.Model(str(zoo.safetensors_gguf(SMALLEST, "FP32")), TEST_THREADS) as model:
        yield model, zoo.shape(SMALLEST)


@pytest.fixture(scope="module")
def long_tokens(small):
    model, _ = small
    return random_tokens(model.n_vocab, LONGEST, seed=1)


@pytest.fixture(scope="module")
def token_by_token(small, long_tokens):
    """Logits and state after each of the LONGEST tokens, fed one at a time."""
    model, _ = small
    logits, states = [], []
    state = None
    for token in long_tokens:
        out, state = model.eval(int(token), state)
        logits.append(out.copy())
        states.append(state.copy())
    return logits, states


@pytest.mark.parametrize("n_tokens", SEQUENCE_LENGTHS)
def test_sequence_equals_token_by_token(small, long_tokens, token_by_token, n_tokens):
    model, shape = small
    expected = (token_by_token[0][n_tokens - 1], token_by_token[1][n_tokens - 1])
    actual = model.eval_sequence(long_tokens[:n_tokens])
    assert_close(shape, actual, expected, SEQUENCE_TOL, f"{n_tokens} tokens")


@pytest.mark.parametrize("file_type", ["FP32", "FP16"])
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_sequence_equals_token_by_token_every_shape(zoo, name, file_type):
    """64 tokens on each checkpoint and file type: other matrix sizes and types
    take other kernels (FP16: activations are rounded to fp16 alike in both modes)."""
    rwkv_cpp = import_rwkv_cpp()
    tokens = parity_tokens(zoo.spec(name))
    path = zoo.safetensors_gguf(name, file_type)
    expected = run_ours(path, tokens)
    with rwkv_cpp.Model(str(path), TEST_THREADS) as model:
        actual = model.eval_sequence(tokens)
    assert_close(zoo.shape(name), actual, (expected.logits[-1], expected.states[-1]),
                 SEQUENCE_TOL, name)


@pytest.mark.parametrize("split_points", [[1], [2, 65], [63, 64, 65], [17, 200, 201, 299]])
def test_split_prefill_equals_one_call(small, long_tokens, split_points):
    model, shape = small
    tokens = long_tokens[:300]
    expected = model.eval_sequence(tokens)
    state = None
    for chunk in np.split(tokens, split_points):
        logits, state = model.eval_sequence(chunk, state)
    assert_close(shape, (logits, state), expected, SEQUENCE_TOL, f"split at {split_points}")


@pytest.mark.parametrize("max_chunk_tokens", [1, 7, 64])
def test_internal_chunking_equals_one_graph(zoo, long_tokens, token_by_token, max_chunk_tokens):
    """eval_sequence cuts long inputs into graphs of max_chunk_tokens tokens."""
    rwkv_cpp = import_rwkv_cpp()
    path = str(zoo.safetensors_gguf(SMALLEST, "FP32"))
    with rwkv_cpp.Model(path, TEST_THREADS, max_chunk_tokens=max_chunk_tokens) as model:
        actual = model.eval_sequence(long_tokens[:300])
    expected = (token_by_token[0][299], token_by_token[1][299])
    assert_close(zoo.shape(SMALLEST), actual, expected, SEQUENCE_TOL,
                 f"max_chunk_tokens={max_chunk_tokens}")


def test_prefill_then_decode_equals_token_by_token(small, long_tokens, token_by_token):
    model, shape = small
    _, state = model.eval_sequence(long_tokens[:100])
    for token in long_tokens[100:130]:
        logits, state = model.eval(int(token), state)
    expected = (token_by_token[0][129], token_by_token[1][129])
    assert_close(shape, (logits, state), expected, SEQUENCE_TOL, "prefill 100 + decode 30")


def test_eval_does_not_modify_input_state(small, long_tokens):
    model, _ = small
    _, state = model.eval_sequence(long_tokens[:10])
    before = state.copy()
    _, new_state = model.eval(int(long_tokens[10]), state)
    np.testing.assert_array_equal(state, before)
    _, new_state_seq = model.eval_sequence(long_tokens[10:20], state)
    np.testing.assert_array_equal(state, before)
    assert not np.array_equal(new_state, before)
    assert not np.array_equal(new_state_seq, before)


def test_init_state_layout(small):
    model, shape = small
    state = model.init_state()
    assert state.dtype == np.float32 and state.shape == (model.state_len,)
    assert model.state_len == shape.state_len
    np.testing.assert_array_equal(state, ref.initial_state(shape).astype(np.float32))


def test_state_none_equals_init_state(small, long_tokens):
    model, _ = small
    token = int(long_tokens[0])
    for a, b in zip(model.eval(token), model.eval(token, model.init_state())):
        np.testing.assert_array_equal(a, b)
    tokens = long_tokens[:5]
    for a, b in zip(model.eval_sequence(tokens), model.eval_sequence(tokens, model.init_state())):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", [SMALLEST, "v512_d768_l1"])
def test_independent_of_thread_count(zoo, name):
    rwkv_cpp = import_rwkv_cpp()
    path = str(zoo.safetensors_gguf(name, "FP32"))
    tokens = parity_tokens(zoo.spec(name))
    results = {}
    for n_threads in (1, 2):
        with rwkv_cpp.Model(path, n_threads=n_threads) as model:
            state = None
            for token in tokens[:16]:
                logits, state = model.eval(int(token), state)
            results[n_threads] = ((logits, state), model.eval_sequence(tokens))
    shape = zoo.shape(name)
    assert_close(shape, results[1][0], results[2][0], THREADS_TOL, "eval, 1 vs 2 threads")
    assert_close(shape, results[1][1], results[2][1], THREADS_TOL, "eval_sequence, 1 vs 2 threads")
