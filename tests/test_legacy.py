"""rwkv.cpp legacy .bin files: loading, conversion, and clear errors."""

import struct

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import ModelFormatError, UnsupportedModelError
from rwkv_cpp.convert import ConvertError, UnsupportedVersionError, convert_file, read_gguf

from shared_data import REFERENCE, need

PROMPT = [34, 105, 110]  # the bytes of '"in'


def _expected(name):
    return np.fromfile(need(REFERENCE / ("expected-logits-%s.bin" % name)), dtype="<f4")


def _logits(path):
    with rwkv_cpp.Model(str(path), n_threads=2) as m:
        logits = None
        state = None
        for tok in PROMPT:  # one at a time, as the expected logits were made
            logits, state = m.eval(tok, state)
        return logits


# Bounds for the 4v0 fixture (logits span about -4.7 .. 5.8):
#  FP32: 1e-4 (the bound; measured 1.7e-6).
#  FP16: every matrix rounded to 11 significant bits (relative error
#        <= 2**-11 ~ 4.9e-4 per weight) and activations rounded to fp16 in
#        ggml's dot products: ~1e-3 relative on O(5) logits; bound 1e-2
#        (measured 2.5e-3).
#  Q5_0/Q5_1: 5-bit blocks of 32: step = block range / 31, i.e. a weight
#        error up to ~1.6% of the block's range; logits move by a few
#        percent of their scale: bound 0.3 (measured 0.11 and 0.10).
BOUNDS = {"FP32": 1e-4, "FP16": 1e-2, "Q5_0": 0.3, "Q5_1": 0.3}


@pytest.mark.parametrize("kind", ["FP32", "FP16", "Q5_0", "Q5_1"])
def test_rwkv4_fixture_loads_and_matches(kind):
    path = need(REFERENCE / ("tiny-rwkv-4v0-660K-%s.bin" % kind))
    err = np.abs(_logits(path) - _expected("4v0-660K")).max()
    assert err <= BOUNDS[kind], (kind, err)


def test_converted_fixture_equals_direct_load(tmp_path):
    src = need(REFERENCE / "tiny-rwkv-4v0-660K-FP16.bin")
    out = tmp_path / "t.gguf"
    summary = convert_file(str(src), str(out))
    assert summary.type == "FP16" and summary.n_layer == 4
    g = read_gguf(str(out))
    assert g.kv["rwkv.emb_ln0_applied"] is False
    assert "blocks.0.ln0.weight" in g.tensors
    assert np.array_equal(_logits(out), _logits(src))


@pytest.mark.parametrize("kind", ["Q5_0", "Q5_1"])
def test_our_quantization_is_byte_identical_to_rwkv_cpp(tmp_path, kind):
    """ggml's block quantizers are deterministic: quantizing the FP32 fixture
    must reproduce rwkv.cpp's quantized matrices bit for bit."""
    from rwkv_cpp.quantize import quantize
    fp32 = tmp_path / "f32.gguf"
    convert_file(str(need(REFERENCE / "tiny-rwkv-4v0-660K-FP32.bin")), str(fp32))
    ours = tmp_path / "ours.gguf"
    quantize(fp32, ours, kind, n_threads=2)
    ref = tmp_path / "ref.gguf"
    convert_file(str(need(REFERENCE / ("tiny-rwkv-4v0-660K-%s.bin" % kind))), str(ref))
    a, b = read_gguf(str(ours)), read_gguf(str(ref))
    compared = 0
    for name, info in b.tensors.items():
        if info.type.name != kind:
            continue  # rwkv.cpp keeps emb/head in FP32
        assert a.tensors[name].type == info.type, name
        assert np.array_equal(np.asarray(a.tensor(name)).view(np.uint8), np.asarray(b.tensor(name)).view(np.uint8)), name
        compared += 1
    assert compared == 4 * 7


def _patched(tmp_path, src, offset, value, name):
    data = bytearray(open(src, "rb").read())
    data[offset:offset + 4] = struct.pack("<i", value)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


def test_unsupported_file_version(tmp_path):
    path = _patched(tmp_path, need(REFERENCE / "tiny-rwkv-4v0-660K-FP16.bin"), 4, 99, "v99.bin")
    with pytest.raises(UnsupportedModelError, match="version 99"):
        rwkv_cpp.Model(str(path))


def test_version_100_quantized_is_refused(tmp_path):
    path = _patched(tmp_path, need(REFERENCE / "tiny-rwkv-4v0-660K-Q5_1.bin"), 4, 100, "v100q.bin")
    with pytest.raises(UnsupportedModelError, match="version-100"):
        rwkv_cpp.Model(str(path))


@pytest.mark.parametrize("keep", [10, 30, 1000, -1])
def test_truncated_bin(tmp_path, keep):
    data = open(need(REFERENCE / "tiny-rwkv-4v0-660K-FP32.bin"), "rb").read()
    path = tmp_path / "trunc.bin"
    path.write_bytes(data[:keep] if keep > 0 else data[:keep])
    with pytest.raises(ModelFormatError):
        rwkv_cpp.Model(str(path))


def test_corrupt_record(tmp_path):
    # First record header right after the 24-byte file header: a dimension count of 1000.
    path = _patched(tmp_path, need(REFERENCE / "tiny-rwkv-4v0-660K-FP32.bin"), 24, 1000, "dims.bin")
    with pytest.raises(ModelFormatError, match="dimensions"):
        rwkv_cpp.Model(str(path))
    path = _patched(tmp_path, need(REFERENCE / "tiny-rwkv-4v0-660K-FP32.bin"), 28, 10 ** 9, "key.bin")
    with pytest.raises(ModelFormatError, match="key of"):
        rwkv_cpp.Model(str(path))


def test_other_versions_are_named(tmp_path):
    with pytest.raises(UnsupportedModelError, match="RWKV-5.2"):
        rwkv_cpp.Model(str(need(REFERENCE / "tiny-rwkv-5v2-730K-FP32.bin")))
    with pytest.raises(UnsupportedVersionError, match="RWKV-7.0"):
        convert_file(str(need(REFERENCE / "tiny-rwkv-7v0-834K-FP32.bin")), str(tmp_path / "x.gguf"))


def test_bin_conversion_refuses_type(tmp_path):
    with pytest.raises(ConvertError, match="as stored"):
        convert_file(str(need(REFERENCE / "tiny-rwkv-4v0-660K-FP32.bin")), str(tmp_path / "x.gguf"), "FP16")
