"""Batched evaluation (rwkv_eval_batch, Context.eval_batch).

Each sequence of a batch must give exactly the logits and the state of
evaluating it alone (rwkv_eval_sequence on a context with the same
max_chunk_tokens): bit for bit, not within a tolerance.  The batch puts the
columns of all its sequences through each matrix product together; the
packed kernels and ggml's mul_mat compute every output column from its own
input column in a fixed order whatever the number of columns, and the
per-sequence ops (token shift, WKV) run each sequence's tokens exactly as
alone, so any difference is a bug.

Mixed batches: decode steps (1 token) and prompts of various lengths, from
the initial state, from a state carried over from an earlier call, or from
a random state; n_seq = 1, 3, 17, 64, every version, every matrix type.  A
context with a small max_chunk_tokens also splits sequences across passes.
Bad input: a clear error and no state written.  Graph cache: many mixes
build few graphs.
"""

import numpy as np
import pytest

from _testing_lib import lib as testing_lib
from conftest import import_rwkv_cpp

rwkv_cpp = import_rwkv_cpp()
from rwkv_cpp._lib import ffi, lib  # noqa: E402

V4 = "v1000_d128_l3"  # widths of multiples of 32: the packed kernels take every matrix
VERSIONS = ["4", "5.0", "5.1", "5.2", "6.0", "7.0"]
TYPES = ["FP32", "FP16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1"]
N_SEQS = [1, 3, 17, 64]
MAX_LEN = 24  # the longest prompt of a mixed batch


@pytest.fixture(scope="module")
def model_paths(zoo, wkv_zoo, tmp_path_factory):
    """(version, type) -> a GGUF path, made on demand once."""
    root = tmp_path_factory.mktemp("batch")
    cache = {}

    def get(version, file_type):
        key = (version, file_type)
        if key not in cache:
            if version == "4":
                base = zoo.safetensors_gguf(V4, "FP32" if file_type != "FP16" else "FP16")
                if file_type in ("FP32", "FP16"):
                    cache[key] = base
                else:
                    from rwkv_cpp.quantize import quantize

                    cache[key] = root / f"{V4}-{file_type}.gguf"
                    quantize(base, cache[key], file_type, n_threads=1)
            elif file_type in ("FP32", "FP16"):
                cache[key] = wkv_zoo.gguf(f"v{version}-h64", file_type)
            else:
                cache[key] = wkv_zoo.quantized(f"v{version}-h64", file_type)
        return str(cache[key])

    return get


def mixed_batch(model, n_seq, seed):
    """n_seq sequences and their input states: about a third decode steps,
    the rest prompts of 2..MAX_LEN tokens; states None, carried from an
    earlier evaluation, or random."""
    rng = np.random.default_rng(seed)
    sequences, states = [], []
    for i in range(n_seq):
        n = 1 if rng.random() < 0.35 else int(rng.integers(2, MAX_LEN + 1))
        sequences.append(rng.integers(0, model.n_vocab, size=n).astype(np.uint32))
        kind = i % 3
        if kind == 0:
            states.append(None)
        elif kind == 1:
            prefix = rng.integers(0, model.n_vocab, size=int(rng.integers(1, 6)))
            states.append(model.eval_sequence(prefix)[1])
        else:
            states.append(model.init_state() + rng.standard_normal(model.state_len).astype(np.float32) * 0.1)
    return sequences, states


def alone(ctx, sequences, states):
    """The reference: each sequence evaluated by itself, in order, on ctx (a
    Context or a Model)."""
    results = [ctx.eval_sequence(seq, state) for seq, state in zip(sequences, states)]
    return np.stack([r[0] for r in results]), np.stack([r[1] for r in results])


def assert_bit_equal(actual, expected, what):
    for name, a, e in zip(("logits", "state"), actual, expected):
        bad = np.flatnonzero(np.any(a.view(np.uint32) != e.view(np.uint32), axis=1))
        assert bad.size == 0, f"{what}: {name} of sequences {bad.tolist()} differ (max-abs {np.abs(a - e).max():.3g})"


@pytest.mark.parametrize("file_type", TYPES)
@pytest.mark.parametrize("version", VERSIONS)
def test_batch_equals_alone(model_paths, version, file_type):
    """Against each sequence alone on the default context (passes of up to
    128 tokens), batches on it and on one whose passes of 16 tokens split
    sequences: where a pass cuts a sequence changes none of its bits."""
    with rwkv_cpp.Model(model_paths(version, file_type), n_threads=2) as model:
        split = model.context(2, max_chunk_tokens=16)
        for n_seq in N_SEQS:
            sequences, states = mixed_batch(model, n_seq, seed=n_seq)
            expected = alone(model, sequences, states)
            for ctx, what in ((model, "default"), (split, "max_chunk_tokens=16")):
                actual = ctx.eval_batch(sequences, states)
                assert actual[0].shape == (n_seq, model.n_vocab)
                assert actual[1].shape == (n_seq, model.state_len)
                assert_bit_equal(actual, expected, f"v{version} {file_type} n_seq={n_seq} {what}")


@pytest.mark.parametrize("version", VERSIONS)
def test_batch_equals_alone_thread_counts(model_paths, version):
    """A batch on 1 and 3 threads against sequences alone on 2."""
    with rwkv_cpp.Model(model_paths(version, "Q5_1"), n_threads=2) as model:
        sequences, states = mixed_batch(model, 17, seed=5)
        expected = alone(model.context(2), sequences, states)
        for n_threads in (1, 3):
            with model.context(n_threads) as ctx:
                assert_bit_equal(ctx.eval_batch(sequences, states), expected, f"{n_threads} threads")


@pytest.mark.parametrize("file_type", ["FP16", "Q8_0", "Q4_1"])
@pytest.mark.parametrize("version", ["4", "7.0"])
def test_batch_equals_alone_ggml_kernels(model_paths, version, file_type):
    """The same with ggml's kernels (repack=False): ggml's mul_mat also
    computes each column alone."""
    with rwkv_cpp.Model(model_paths(version, file_type), n_threads=2, repack=False) as model:
        with model.context(2, max_chunk_tokens=16) as ctx:
            sequences, states = mixed_batch(model, 17, seed=7)
            assert_bit_equal(ctx.eval_batch(sequences, states), alone(ctx, sequences, states),
                             f"v{version} {file_type} ggml kernels")


def test_batch_states_forms(model_paths):
    """states: None, a list with None items, an (n_seq, state_len) array:
    the same results, and the given states untouched."""
    with rwkv_cpp.Model(model_paths("7.0", "FP16"), n_threads=2) as model:
        sequences, states = mixed_batch(model, 6, seed=9)
        states[0] = states[1]  # two sequences from one state
        as_array = np.stack([model.init_state() if s is None else s for s in states])
        before = as_array.copy()
        expected = model.eval_batch(sequences, states)
        assert_bit_equal(model.eval_batch(sequences, as_array), expected, "array of states")
        np.testing.assert_array_equal(as_array, before)
        init = model.eval_batch(sequences)
        assert_bit_equal(init, model.eval_batch(sequences, [None] * 6), "states=None")


def test_all_logits_batch_equals_alone(model_paths):
    """rwkv_eval_batch with all_logits against rwkv_eval_sequence_all_logits,
    and a sequence without logits beside ones with."""
    with rwkv_cpp.Model(model_paths("6.0", "Q4_0"), n_threads=2) as model:
        ctx = model.context(2, max_chunk_tokens=16)
        sequences, states = mixed_batch(model, 5, seed=3)
        n_vocab, n_state = model.n_vocab, model.state_len
        logits = [np.full((len(s), n_vocab), np.nan, dtype=np.float32) for s in sequences]
        out_states = np.empty((len(sequences), n_state), dtype=np.float32)
        seqs = ffi.new("struct rwkv_batch_seq[]", len(sequences))
        for i, (toks, state) in enumerate(zip(sequences, states)):
            seqs[i].tokens = ffi.cast("uint32_t *", ffi.from_buffer(toks))
            seqs[i].n_tokens = toks.size
            seqs[i].state_in = ffi.NULL if state is None else ffi.cast("float *", ffi.from_buffer(state))
            seqs[i].state_out = ffi.cast("float *", ffi.from_buffer(out_states[i]))
            if i != 2:
                seqs[i].logits_out = ffi.cast("float *", ffi.from_buffer(logits[i]))
                seqs[i].n_logits = logits[i].size
        assert lib.rwkv_eval_batch(ctx._ctx, seqs, len(sequences), n_state, True) == lib.RWKV_STATUS_OK
        assert np.isnan(logits[2]).all()
        for i, (toks, state) in enumerate(zip(sequences, states)):
            expected_logits, expected_state = ctx.eval_sequence(toks, state, all_logits=True)
            assert out_states[i].tobytes() == expected_state.tobytes(), f"state of sequence {i}"
            if i != 2:
                assert logits[i].tobytes() == expected_logits.tobytes(), f"logits of sequence {i}"


# ---- bad input --------------------------------------------------------------


class RawBatch:
    """A valid batch of three sequences as C structs, every state_out filled
    with a sentinel, to be broken by a test."""

    SENTINEL = 12345.0

    def __init__(self, model):
        self.model = model
        self.tokens = [np.array([1, 2, 3], dtype=np.uint32), np.array([4], dtype=np.uint32),
                       np.array([5, 6], dtype=np.uint32)]
        self.states = np.full((3, model.state_len), self.SENTINEL, dtype=np.float32)
        self.logits = np.full((3, model.n_vocab), self.SENTINEL, dtype=np.float32)
        self.seqs = ffi.new("struct rwkv_batch_seq[]", 3)
        for i, toks in enumerate(self.tokens):
            self.seqs[i].tokens = ffi.cast("uint32_t *", ffi.from_buffer(toks))
            self.seqs[i].n_tokens = toks.size
            self.seqs[i].state_in = ffi.NULL
            self.seqs[i].state_out = ffi.cast("float *", ffi.from_buffer(self.states[i]))
            self.seqs[i].logits_out = ffi.cast("float *", ffi.from_buffer(self.logits[i]))
            self.seqs[i].n_logits = model.n_vocab

    def run(self, ctx, n_seq=3, n_state=None, seqs=None):
        n_state = self.model.state_len if n_state is None else n_state
        status = lib.rwkv_eval_batch(ctx._ctx, self.seqs if seqs is None else seqs, n_seq, n_state, False)
        return status, ffi.string(lib.rwkv_context_last_error(ctx._ctx)).decode()


@pytest.fixture(scope="module")
def small_model(model_paths):
    with rwkv_cpp.Model(model_paths("5.2", "Q8_0"), n_threads=1) as model:
        yield model


def _break_tokens_null(b):
    b.seqs[1].tokens = ffi.NULL


def _break_no_tokens(b):
    b.seqs[2].n_tokens = 0


def _break_state_out_null(b):
    b.seqs[1].state_out = ffi.NULL


def _break_token_id(b):
    b.tokens[2][1] = b.model.n_vocab


def _break_n_logits(b):
    b.seqs[0].n_logits = b.model.n_vocab - 1


BREAKS = {
    "tokens NULL": (_break_tokens_null, "sequence 1: no tokens given"),
    "0 tokens": (_break_no_tokens, "sequence 2: no tokens given"),
    "state_out NULL": (_break_state_out_null, "sequence 1: state_out is NULL"),
    "token id >= n_vocab": (_break_token_id, "sequence 2: token .* at position 1 is out of range"),
    "wrong n_logits": (_break_n_logits, "sequence 0: logits buffer has"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_bad_sequence_writes_nothing(small_model, case):
    import re

    brk, message = BREAKS[case]
    b = RawBatch(small_model)
    brk(b)
    with small_model.context(1) as ctx:
        status, text = b.run(ctx)
    assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert re.search(message, text), text
    assert (b.states == RawBatch.SENTINEL).all(), "a state was written"
    assert (b.logits == RawBatch.SENTINEL).all(), "logits were written"


def test_bad_batch_arguments(small_model):
    b = RawBatch(small_model)
    with small_model.context(1) as ctx:
        assert b.run(ctx, n_seq=0)[1].startswith("no sequences given")
        assert b.run(ctx, seqs=ffi.NULL)[1].startswith("no sequences given")
        status, text = b.run(ctx, n_state=small_model.state_len + 1)
        assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT and "state buffer has" in text
        assert (b.states == RawBatch.SENTINEL).all()
        # and the same batch, unbroken, runs
        assert b.run(ctx) == (lib.RWKV_STATUS_OK, "")
        assert not (b.states == RawBatch.SENTINEL).all(axis=1).any()
    assert lib.rwkv_eval_batch(ffi.NULL, b.seqs, 3, small_model.state_len, False) == \
        lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT


def test_bad_batch_python(small_model):
    errors = rwkv_cpp.errors
    with pytest.raises(errors.InvalidArgumentError, match="no sequences given"):
        small_model.eval_batch([])
    with pytest.raises(errors.InvalidArgumentError, match="no tokens given"):
        small_model.eval_batch([[1, 2], []])
    with pytest.raises(errors.InvalidArgumentError, match="sequence 1: token"):
        small_model.eval_batch([[1, 2], [3, small_model.n_vocab]])
    with pytest.raises(errors.InvalidArgumentError, match="states has 1 items for 2 sequences"):
        small_model.eval_batch([[1], [2]], [None])
    with pytest.raises(errors.InvalidArgumentError, match="float32"):
        small_model.eval_batch([[1], [2]], [None, np.zeros(small_model.state_len)])


# ---- graph cache -----------------------------------------------------------


def shape(n_tokens, n_seq, cap):
    """The graph shape of a pass, as documented at rwkv_eval_batch in rwkv.h."""
    def pow2(x):
        return 1 << (x - 1).bit_length()

    t = pow2(n_tokens)
    if n_tokens > 16:
        step = t // 8
        t = -(-n_tokens // step) * step
    t = min(t, cap)
    return t, min(pow2(n_seq), t)


def graphs_built(path, max_chunk, batches):
    n_seqs = np.array([len(b) for b in batches], dtype=np.uint32)
    lengths = np.array([n for b in batches for n in b], dtype=np.uint32)
    return testing_lib.rwkv_testing_batch_graphs_built(
        path.encode(), max_chunk, ffi.cast("uint32_t *", ffi.from_buffer(n_seqs)), len(batches),
        ffi.cast("uint32_t *", ffi.from_buffer(lengths)))


def test_decode_batches_build_one_graph_per_bucket(model_paths):
    """Decode steps of every batch size 1..64 (twice): one graph per bucket,
    13 graphs for 64 sizes."""
    batches = [[1] * n for n in range(1, 65)] * 2
    expected = len({shape(n, n, 128) for n in range(1, 65)})
    assert expected == 13
    assert graphs_built(model_paths("4", "Q5_1"), 0, batches) == expected


def test_random_mixes_build_bounded_graphs(model_paths):
    """300 distinct random mixes of up to 8 decode steps and prompts, in
    passes of at most 16 tokens: exactly one graph per distinct shape (at
    most 15 exist, fewer than the 16 a context caches)."""
    rng = np.random.default_rng(0)
    batches = set()
    while len(batches) < 300:
        n_seq = int(rng.integers(1, 9))
        batches.add(tuple(1 if rng.random() < 0.6 else int(rng.integers(2, 12)) for _ in range(n_seq)))
    batches = sorted(batches, key=lambda b: rng.random())
    shapes = set()
    for b in batches:  # passes of up to 16 tokens, filled with the sequences in order
        tokens, parts = 0, 0
        for n in b:
            while n > 0:
                if tokens == 16:
                    shapes.add(shape(tokens, parts, 16))
                    tokens, parts = 0, 0
                take = min(n, 16 - tokens)
                tokens, parts, n = tokens + take, parts + 1, n - take
        shapes.add(shape(tokens, parts, 16))
    assert len(shapes) <= 15
    assert graphs_built(model_paths("7.0", "Q4_0"), 16, [list(b) for b in batches]) == len(shapes)
