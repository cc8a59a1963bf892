"""Malformed input: every case must give a clear error (status + message),
never a crash and never a silent wrong answer."""

import os

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import InvalidArgumentError, ModelFormatError, ModelIOError, UnsupportedModelError

from ggufgen import rwkv4_metadata, rwkv4_tensors, write_gguf


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("err") / "good.gguf"
    return str(write_gguf(path, rwkv4_metadata(), rwkv4_tensors()))


@pytest.fixture(scope="module")
def model(good_file):
    with rwkv_cpp.Model(good_file, n_threads=1) as m:
        yield m


def _write_variant(tmp_path, name, meta=None, tensors=None):
    return str(write_gguf(tmp_path / name, meta or rwkv4_metadata(), tensors or rwkv4_tensors()))


def test_good_file_loads(model):
    assert (model.n_vocab, model.n_embed, model.n_layer, model.version) == (64, 32, 2, "4")
    assert model.state_len == 2 * 5 * 32


def test_missing_file(tmp_path):
    with pytest.raises(ModelIOError, match="cannot open"):
        rwkv_cpp.Model(str(tmp_path / "nope.gguf"))


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelIOError, match="not a regular file"):
        rwkv_cpp.Model(str(tmp_path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        rwkv_cpp.Model(str(path))


def test_wrong_magic(tmp_path, good_file):
    data = bytearray(open(good_file, "rb").read())
    data[:4] = b"GGXF"
    path = tmp_path / "magic.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="not a GGUF model file"):
        rwkv_cpp.Model(str(path))


@pytest.mark.parametrize("keep", [10, 100, 1000, -4096, -1])
def test_truncated_file(tmp_path, good_file, keep):
    data = open(good_file, "rb").read()
    path = tmp_path / "trunc.gguf"
    path.write_bytes(data[:keep] if keep > 0 else data[:len(data) + keep])
    with pytest.raises(ModelFormatError) as info:
        rwkv_cpp.Model(str(path))
    assert info.value.status == rwkv_cpp._lib.lib.RWKV_STATUS_ERROR_FILE_FORMAT
    assert str(info.value)


def test_huge_tensor_count(tmp_path, good_file):
    # The tensor count (u64 at offset 8) claims 2**40 tensors.
    data = bytearray(open(good_file, "rb").read())
    data[8:16] = (2 ** 40).to_bytes(8, "little")
    path = tmp_path / "count.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError):
        rwkv_cpp.Model(str(path))


def test_missing_tensor(tmp_path):
    tensors = rwkv4_tensors()
    del tensors["blocks.1.ffn.value.weight"]
    path = _write_variant(tmp_path, "missing.gguf", tensors=tensors)
    with pytest.raises(ModelFormatError, match="missing tensor 'blocks.1.ffn.value.weight'"):
        rwkv_cpp.Model(path)


def test_wrongly_shaped_tensor(tmp_path):
    tensors = rwkv4_tensors()
    tensors["blocks.0.att.key.weight"] = np.zeros((32, 31), np.float32)
    path = _write_variant(tmp_path, "shape.gguf", tensors=tensors)
    with pytest.raises(ModelFormatError, match=r"'blocks.0.att.key.weight' has shape \[31, 32\], expected \[32, 32\]"):
        rwkv_cpp.Model(path)


def test_unexpected_tensor(tmp_path):
    tensors = rwkv4_tensors()
    tensors["blocks.0.att.gate.weight"] = np.zeros((32, 32), np.float32)
    path = _write_variant(tmp_path, "extra.gguf", tensors=tensors)
    with pytest.raises(ModelFormatError, match="unexpected tensor 'blocks.0.att.gate.weight'"):
        rwkv_cpp.Model(path)


def test_missing_metadata(tmp_path):
    meta = rwkv4_metadata()
    del meta["rwkv.n_embed"]
    path = _write_variant(tmp_path, "nometa.gguf", meta=meta)
    with pytest.raises(ModelFormatError, match="missing metadata key 'rwkv.n_embed'"):
        rwkv_cpp.Model(path)


def test_metadata_mismatching_tensors(tmp_path):
    meta = rwkv4_metadata()
    meta["rwkv.n_layer"] = 3
    path = _write_variant(tmp_path, "layers.gguf", meta=meta)
    # 2 layers of 18 tensors and 4 others: too few for 3 layers.
    with pytest.raises(ModelFormatError, match="rwkv.n_layer = 3, but the file has only 40 tensors"):
        rwkv_cpp.Model(path)
    # One tensor of the last layer missing, the count would do: it is named.
    tensors = rwkv4_tensors(n_layer=3)
    del tensors["blocks.2.ffn.value.weight"]
    path = _write_variant(tmp_path, "layer_tensor.gguf", meta=meta, tensors=tensors)
    with pytest.raises(ModelFormatError, match="missing tensor 'blocks.2.ffn.value.weight'"):
        rwkv_cpp.Model(path)


@pytest.mark.parametrize("arch, version", [("rwkv8", "8.0"), ("rwkv7", "8.0"), ("rwkv7", "6.0"), ("rwkv4", "")])
def test_unsupported_version(tmp_path, arch, version):
    """An unknown version, or an architecture and version that do not go
    together: the error names both."""
    meta = rwkv4_metadata()
    meta["general.architecture"] = arch
    meta["rwkv.version"] = version
    path = _write_variant(tmp_path, "v.gguf", meta=meta)
    with pytest.raises(UnsupportedModelError, match=f"architecture '{arch}' \\(RWKV version '{version}'\\)"):
        rwkv_cpp.Model(path)


def test_token_out_of_range(model):
    with pytest.raises(InvalidArgumentError, match="token 64 at position 0 is out of range"):
        model.eval(64)
    with pytest.raises(InvalidArgumentError, match="position 2"):
        model.eval_sequence([1, 2, 1000])
    with pytest.raises(InvalidArgumentError):
        model.eval(-1)
    with pytest.raises(InvalidArgumentError):
        model.eval_sequence([])


def test_state_buffer_checks(model):
    with pytest.raises(InvalidArgumentError, match="state has 319 elements, the model needs 320"):
        model.eval(1, np.zeros(model.state_len - 1, np.float32))
    with pytest.raises(InvalidArgumentError, match="float32"):
        model.eval(1, np.zeros(model.state_len, np.float64))
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        model.eval(1, np.zeros(2 * model.state_len, np.float32)[::2])
    with pytest.raises(InvalidArgumentError, match="out_logits"):
        model.eval(1, out_logits=np.zeros(3, np.float32))


def test_c_level_state_length_check(model):
    # Bypass the Python checks: the C library itself must refuse.
    from rwkv_cpp._lib import ffi, lib
    state = np.zeros(model.state_len + 1, np.float32)
    with model.context(n_threads=1) as ctx:
        status = lib.rwkv_eval(ctx._ctx, 1, ffi.NULL, ffi.cast("float *", ffi.from_buffer(state)),
                               state.size, ffi.NULL, 0)
        assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
        assert "state buffer has 321 floats, the model needs 320" in ffi.string(
            lib.rwkv_context_last_error(ctx._ctx)).decode()


def test_error_then_success_clears_message(model):
    from rwkv_cpp._lib import ffi, lib
    with model.context(n_threads=1) as ctx:
        with pytest.raises(InvalidArgumentError):
            ctx.eval(10 ** 6)
        ctx.eval(1)
        assert ffi.string(lib.rwkv_context_last_error(ctx._ctx)) == b""


def test_closed_model(good_file):
    m = rwkv_cpp.Model(good_file, n_threads=1)
    m.close()
    m.close()  # idempotent
    with pytest.raises(InvalidArgumentError, match="closed"):
        m.eval(1)


def test_bad_thread_count(good_file):
    with pytest.raises(InvalidArgumentError):
        rwkv_cpp.Model(good_file, n_threads=0)
    with pytest.raises(InvalidArgumentError, match="exceeds"):
        rwkv_cpp.Model(good_file, n_threads=100000)


def test_no_mmap_loads_the_same(good_file, model):
    with rwkv_cpp.Model(good_file, n_threads=1, use_mmap=False) as m2:
        a, _ = model.eval_sequence([1, 2, 3])
        b, _ = m2.eval_sequence([1, 2, 3])
        assert np.array_equal(a, b)


def test_library_is_silent(tmp_path, good_file):
    # Loading a broken file must not print (ggml's own log is captured).
    import subprocess
    import sys
    data = open(good_file, "rb").read()
    path = tmp_path / "trunc.gguf"
    path.write_bytes(data[:200])
    code = ("import rwkv_cpp\ntry:\n    rwkv_cpp.Model(%r)\nexcept rwkv_cpp.RWKVError:\n    pass\n" % str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(__file__), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""
