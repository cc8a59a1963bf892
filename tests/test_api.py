"""The public C API's success paths, called as a C program would through
cffi (rwkv_cpp._lib), beside what the Python classes give: rwkv_eval,
in-place states, rwkv_status_str, rwkv_model_logits_len, the log callback,
the out_logits/out_state buffers, rwkv_quantize cancelled by its progress
callback; and the programs the README advertises (examples/quickstart.py,
the bundled model rebuilt byte for byte from demo/)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp._defaults import bundled_model_path
from rwkv_cpp._lib import ffi, lib
from rwkv_cpp.convert import convert_file, convert_state_dict, make_rwkv4_state_dict
from rwkv_cpp.quantize import quantize

ROOT = Path(__file__).resolve().parents[1]
N_VOCAB, N_EMBED, N_LAYER = 300, 64, 2
TOKENS = [5, 299, 0, 17, 42]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "m-f32.gguf"
    convert_state_dict(make_rwkv4_state_dict(N_VOCAB, N_EMBED, N_LAYER, seed=4), str(path), "FP32")
    return path


class CModel:
    """rwkv_model_load + rwkv_context_init, as C code does it."""

    def __init__(self, path, params=None):
        params = params if params is not None else lib.rwkv_model_default_params()
        out, err = ffi.new("struct rwkv_model **"), ffi.new("char[]", 256)
        assert lib.rwkv_model_load(str(path).encode(), params, out, err, 256) == lib.RWKV_STATUS_OK, ffi.string(err)
        self.model = out[0]
        cp = lib.rwkv_context_default_params()
        cp.n_threads = 1
        ctx = ffi.new("struct rwkv_context **")
        assert lib.rwkv_context_init(self.model, cp, ctx, err, 256) == lib.RWKV_STATUS_OK, ffi.string(err)
        self.ctx = ctx[0]
        self.n_state = lib.rwkv_model_state_len(self.model)
        self.n_logits = lib.rwkv_model_logits_len(self.model)

    def eval(self, token, state_in, state_out, logits):
        def p(a):
            return ffi.NULL if a is None else ffi.cast("float *", ffi.from_buffer(a))
        return lib.rwkv_eval(self.ctx, token, p(state_in), p(state_out), self.n_state, p(logits), self.n_logits)

    def close(self):
        lib.rwkv_context_free(self.ctx)
        lib.rwkv_model_free(self.model)


def test_rwkv_eval_success_and_in_place_state(model_file):
    c = CModel(model_file)
    try:
        assert c.n_logits == N_VOCAB == lib.rwkv_model_n_vocab(c.model)
        with rwkv_cpp.Model(str(model_file), n_threads=1) as m:
            assert c.n_state == m.state_len
            expected = [m.eval(TOKENS[0], None)]
            for t in TOKENS[1:]:
                expected.append(m.eval(t, expected[-1][1]))
        # separate buffers, state_in NULL for the first token
        state, logits = np.zeros(c.n_state, np.float32), np.zeros(c.n_logits, np.float32)
        assert c.eval(TOKENS[0], None, state, logits) == lib.RWKV_STATUS_OK
        assert np.array_equal(logits, expected[0][0]) and np.array_equal(state, expected[0][1])
        # state_out == state_in: in place, the same numbers as separate buffers
        for t, (want_logits, want_state) in zip(TOKENS[1:], expected[1:]):
            assert c.eval(t, state, state, logits) == lib.RWKV_STATUS_OK
            assert np.array_equal(logits, want_logits) and np.array_equal(state, want_state)
        # logits_out NULL skips the head; the state is the same
        again = np.zeros(c.n_state, np.float32)
        assert c.eval(TOKENS[0], None, again, None) == lib.RWKV_STATUS_OK
        assert np.array_equal(again, expected[0][1])
    finally:
        c.close()


def test_status_str_names_every_status():
    names = {}
    for status in range(lib.RWKV_STATUS_OK, lib.RWKV_STATUS_ERROR_COMPUTE + 1):
        text = ffi.string(lib.rwkv_status_str(status)).decode()
        assert text and text not in names.values(), (status, text)
        names[status] = text
    assert lib.rwkv_status_str(12345) != ffi.NULL  # an unknown value still gets a string


def test_log_callback_receives_the_messages(model_file):
    messages = []

    @ffi.callback("void(enum rwkv_log_level, const char *, void *)")
    def log(level, text, _user):
        messages.append((int(level), ffi.string(text).decode()))

    params = lib.rwkv_model_default_params()
    params.log_callback = log
    c = CModel(model_file, params)
    try:
        loaded = [text for level, text in messages if level == lib.RWKV_LOG_LEVEL_INFO and "loaded '" in text]
        assert len(loaded) == 1 and str(model_file) in loaded[0] and "n_vocab %d" % N_VOCAB in loaded[0], messages
        state = np.zeros(c.n_state, np.float32)
        assert c.eval(TOKENS[0], None, state, None) == lib.RWKV_STATUS_OK
        assert any(level == lib.RWKV_LOG_LEVEL_DEBUG and "built graph" in text for level, text in messages), messages
    finally:
        c.close()


def test_out_buffers_are_filled_and_returned(model_file):
    with rwkv_cpp.Model(str(model_file), n_threads=1) as m:
        want_logits, want_state = m.eval(TOKENS[0], None)
        logits, state = np.full(m.n_vocab, np.nan, np.float32), np.full(m.state_len, np.nan, np.float32)
        got_logits, got_state = m.eval(TOKENS[0], None, out_logits=logits, out_state=state)
        assert got_logits is logits and got_state is state
        assert np.array_equal(logits, want_logits) and np.array_equal(state, want_state)
        seq_logits, seq_state = m.eval_sequence(TOKENS, None)
        got_logits, got_state = m.eval_sequence(TOKENS, None, out_logits=logits, out_state=state)
        assert got_logits is logits and got_state is state
        assert np.array_equal(logits, seq_logits) and np.array_equal(state, seq_state)


def test_quantize_cancelled_by_its_progress_callback(model_file, tmp_path):
    calls = []

    @ffi.callback("bool(float, void *)")
    def progress(fraction, _user):
        calls.append(fraction)
        return len(calls) < 3  # cancel at the third tensor

    params = ffi.new("struct rwkv_quantize_params *", lib.rwkv_quantize_default_params())
    params.progress_callback = progress
    err = ffi.new("char[]", 256)
    params.error_buf, params.error_buf_size = err, 256
    out = tmp_path / "cancelled.gguf"
    status = lib.rwkv_quantize(str(model_file).encode(), str(out).encode(), lib.RWKV_TYPE_Q8_0, params)
    assert status != lib.RWKV_STATUS_OK and ffi.string(err)
    assert len(calls) == 3 and not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial file left beside it


@pytest.mark.timeout(300)
def test_quickstart_runs(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "3. evaluating it" in res.stdout
    assert (tmp_path / "tiny-rwkv4-FP16.gguf").exists()


BUNDLED_SHA256 = "8bded06a9534875e9a52284dad36229d67ce903a9c4d8bfdebae2a1550f8b2e8"  # its model card


@pytest.mark.timeout(300)
def test_bundled_model_rebuilds_byte_identically(tmp_path):
    """demo/'s checkpoint converted and quantized as the model card says
    (python -m rwkv_cpp.quantize ... Q5_1 --quantize-head --quantize-emb)."""
    bundled = Path(bundled_model_path())
    assert hashlib.sha256(bundled.read_bytes()).hexdigest() == BUNDLED_SHA256
    converted = tmp_path / "demo.gguf"
    convert_file(str(ROOT / "demo" / "rwkv4-shakespeare-L8-D192.pth"), str(converted), "FP32")
    rebuilt = tmp_path / "demo-Q5_1.gguf"
    quantize(converted, rebuilt, "Q5_1", n_threads=2, quantize_head=True, quantize_emb=True)
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == BUNDLED_SHA256
