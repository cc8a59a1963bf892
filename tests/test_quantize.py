"""Quantization: every type round-trips (quantize -> load -> eval) with
logits close to FP32 within bounds derived from the formats' precision."""

import math
import subprocess
import sys

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import InvalidArgumentError, ModelFormatError, ModelIOError, UnsupportedModelError
from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict
from rwkv_cpp.quantize import TYPES, quantize, type_code

from gguf_reader import read_gguf

N_VOCAB, N_EMBED, N_LAYER = 512, 128, 3

# Relative RMS error of one quantized weight, for roughly Gaussian weights in
# blocks of 32 (block max ~ 2.1 sigma): uniform rounding error of step/sqrt(12)
# with step = 2*max/(2^bits - 1) (Q8_0: max/127).  ggml also rounds the
# activations of each product: to Q8_0 for quantized matrices, to FP16 for
# FP16 ones.  Logits are bounded by 4x (weight + activation error), relative
# to their RMS; measured ratios are 1.6x - 2.5x.
WEIGHT_REL_ERR = {
    "FP32": 0.0,
    "FP16": 2.0 ** -11 / math.sqrt(3),
    "Q8_0": 2.1 / 127 / math.sqrt(12),
    "Q5_0": 2 * 2.1 / 31 / math.sqrt(12),
    "Q5_1": 2 * 2.1 / 31 / math.sqrt(12),
    "Q4_0": 2 * 2.1 / 15 / math.sqrt(12),
    "Q4_1": 2 * 2.1 / 15 / math.sqrt(12),
}
ACT_REL_ERR = {"FP32": 0.0, "FP16": WEIGHT_REL_ERR["FP16"]}


def _rel_bound(kind):
    act = ACT_REL_ERR.get(kind, WEIGHT_REL_ERR["Q8_0"])
    return max(4 * (WEIGHT_REL_ERR[kind] + act), 1e-6)


def _log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_divergence(ref_logits, logits):
    """Mean over positions of KL(softmax(ref) || softmax(logits))."""
    a, b = _log_softmax(ref_logits), _log_softmax(logits)
    return float((np.exp(a) * (a - b)).sum(-1).mean())


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "model-f32.gguf"
    convert_state_dict(make_rwkv4_state_dict(N_VOCAB, N_EMBED, N_LAYER, seed=3), str(path), "FP32")
    return path


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, N_VOCAB, 48).astype(np.uint32)


@pytest.fixture(scope="module")
def ref_logits(fp32_file, tokens):
    with rwkv_cpp.Model(str(fp32_file), n_threads=2) as m:
        return m.eval_sequence(tokens, all_logits=True)[0]


@pytest.mark.parametrize("kind", TYPES)
def test_round_trip_every_type(tmp_path, fp32_file, tokens, ref_logits, kind):
    out = tmp_path / ("m-%s.gguf" % kind)
    quantize(fp32_file, out, kind, n_threads=2)
    with rwkv_cpp.Model(str(out), n_threads=2) as m:
        assert m.type == kind
        logits = m.eval_sequence(tokens, all_logits=True)[0]
    rms = float(np.sqrt((ref_logits.astype(np.float64) ** 2).mean()))
    rel = float(np.sqrt(((logits - ref_logits).astype(np.float64) ** 2).mean())) / rms
    bound = _rel_bound(kind)
    assert rel <= bound, (kind, rel, bound)
    # For small errors KL ~ var(logit error) / 2; with the relative bound:
    assert kl_divergence(ref_logits, logits) <= 0.5 * (bound * rms) ** 2 + 1e-9


def test_policy_table(tmp_path, fp32_file):
    out = tmp_path / "q.gguf"
    quantize(fp32_file, out, "Q5_1")
    g = read_gguf(str(out))
    assert g.kv["general.file_type"] == type_code("Q5_1")
    for name, info in g.tensors.items():
        if len(info.ne) == 1 or info.ne[1] == 1:
            assert info.type.name == "F32", name          # 1-D parameters stay FP32
        elif name in ("emb.weight", "head.weight"):
            assert info.type.name == "F16", name          # default: FP16
        else:
            assert info.type.name == "Q5_1", name
    out2 = tmp_path / "q2.gguf"
    quantize(fp32_file, out2, "Q5_1", quantize_head=True, quantize_emb=True)
    g2 = read_gguf(str(out2))
    assert g2.tensors["head.weight"].type.name == "Q5_1"
    assert g2.tensors["emb.weight"].type.name == "Q5_1"


def test_requantizing_a_quantized_file(tmp_path, fp32_file, tokens):
    q = tmp_path / "q51.gguf"
    quantize(fp32_file, q, "Q5_1")
    with pytest.raises(UnsupportedModelError, match="already quantized"):
        quantize(q, tmp_path / "q40.gguf", "Q4_0")
    assert not (tmp_path / "q40.gguf").exists()
    # same type (a copy) and float targets (exact dequantization) are fine
    quantize(q, tmp_path / "same.gguf", "Q5_1")
    quantize(q, tmp_path / "deq.gguf", "FP32")
    with rwkv_cpp.Model(str(q)) as a, rwkv_cpp.Model(str(tmp_path / "same.gguf")) as b, \
            rwkv_cpp.Model(str(tmp_path / "deq.gguf")) as c:
        la, lb = a.eval_sequence(tokens)[0], b.eval_sequence(tokens)[0]
        lc = c.eval_sequence(tokens)[0]
    assert np.array_equal(la, lb)
    # dequantized weights are exact; only the activation rounding differs
    assert np.abs(lc - la).max() < 0.1


def test_unknown_type_name(tmp_path, fp32_file):
    with pytest.raises(InvalidArgumentError, match="unknown type 'Q3_K'"):
        quantize(fp32_file, tmp_path / "x.gguf", "Q3_K")
    res = subprocess.run([sys.executable, "-m", "rwkv_cpp.quantize", str(fp32_file), str(tmp_path / "x.gguf"), "Q3_K"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown type 'Q3_K'" in res.stderr


def test_bad_inputs(tmp_path, fp32_file):
    with pytest.raises(ModelIOError):
        quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf", "Q8_0")
    data = open(fp32_file, "rb").read()
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        quantize(trunc, tmp_path / "x.gguf", "Q8_0")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(ModelIOError):
        quantize(fp32_file, tmp_path / "no" / "such" / "dir.gguf", "Q8_0")


def test_cli_prints_sizes(tmp_path, fp32_file):
    out = tmp_path / "cli.gguf"
    res = subprocess.run([sys.executable, "-m", "rwkv_cpp.quantize", str(fp32_file), str(out), "q8_0",
                          "--threads", "2"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "MiB" in res.stderr and "Q8_0" in res.stderr
    assert out.stat().st_size < fp32_file.stat().st_size / 2
    help_ = subprocess.run([sys.executable, "-m", "rwkv_cpp.quantize", "--help"], capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "Q5_1" in help_.stdout
