"""``convert --type``: every type the library writes, in one streaming step.

A file converted to a type must equal, byte for byte, the FP32 conversion
quantized to that type by ``python -m rwkv_cpp.quantize`` (the same policy,
the same quantizer, the same tensor and key order), for every version and
with the head/embedding options; the default type is FP16; BF16 is refused
with the reason; memory stays about one tensor.
"""

import hashlib
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from rwkv_cpp._lib import ffi, lib
from rwkv_cpp.convert import ConvertError, convert_file, convert_state_dict, make_state_dict
from rwkv_cpp.convert.convert import ConvertOptions, convert_checkpoint
from rwkv_cpp.convert.storage import OUTPUT_TYPES, encode
from rwkv_cpp.convert.tensors import Checkpoint
from rwkv_cpp.quantize import quantize

from gguf_reader import read_gguf

ROOT = Path(__file__).resolve().parents[1]
TYPES = list(OUTPUT_TYPES)
VERSIONS = ["4", "5.0", "5.2", "6.0", "7.0"]


def _model(version, n_layer=2, seed=1):
    # n_embed 96: a multiple of 32 (quantized), vocabulary 200 with 8-wide
    # LoRAs: rows of other lengths too (the F16 fallback of the policy)
    return make_state_dict(version, 200, 96, n_layer, head_size=32, seed=seed)


@pytest.mark.parametrize("version", VERSIONS)
def test_one_step_equals_convert_then_quantize(tmp_path, version):
    sd = _model(version)
    f32 = tmp_path / "f32.gguf"
    convert_state_dict(sd, f32, "FP32")
    for out_type in TYPES:
        for head, emb in ((None, None), (True, True)):
            if (head, emb) != (None, None) and out_type in ("FP32", "FP16"):
                continue
            one = tmp_path / f"{out_type}-one.gguf"
            two = tmp_path / f"{out_type}-two.gguf"
            opts = ConvertOptions(out_type, head, emb)
            summary = convert_checkpoint(Checkpoint.from_arrays(sd), str(one), opts)
            assert summary.type == out_type and summary.bytes_written == one.stat().st_size
            quantize(f32, two, out_type, quantize_head=head, quantize_emb=emb)
            assert one.read_bytes() == two.read_bytes(), (version, out_type, head, emb)


def test_policy_of_the_one_step_file(tmp_path):
    """Vectors F32, block matrices quantized, head/emb/LoRAs F16 by default."""
    convert_state_dict(_model("6.0"), tmp_path / "m.gguf", "Q5_1")
    g = read_gguf(tmp_path / "m.gguf")
    assert g.kv["general.file_type"] == 4
    types = {name: t.type for name, t in g.tensors.items()}
    assert types["blocks.0.att.key.weight"] == 7  # Q5_1
    assert types["blocks.0.ln1.weight"] == 0
    assert types["head.weight"] == types["emb.weight"] == types["blocks.0.att.time_maa_w1"] == 1


@pytest.mark.timeout(300)
def test_bundled_model_in_one_step(tmp_path):
    """The bundled demo model (a bf16 checkpoint converted to FP32 and then
    quantized, its model card says) comes out of one conversion unchanged."""
    from test_api import BUNDLED_SHA256

    out = tmp_path / "demo-Q5_1.gguf"
    convert_file(ROOT / "demo" / "rwkv4-shakespeare-L8-D192.pth", out,
                 options=ConvertOptions("Q5_1", quantize_head=True, quantize_emb=True, n_threads=2))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == BUNDLED_SHA256


def test_default_type_is_fp16(tmp_path):
    from rwkv_cpp.convert import save_safetensors

    save_safetensors(str(tmp_path / "m.safetensors"), _model("7.0"))
    assert convert_file(tmp_path / "m.safetensors", tmp_path / "m.gguf").type == "FP16"
    assert read_gguf(tmp_path / "m.gguf").kv["general.file_type"] == 1


def test_bf16_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConvertError, match="BF16 output is not supported: the library's matrix kernels"):
        convert_state_dict(_model("4"), tmp_path / "m.gguf", "BF16")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.timeout(120)
def test_cli_types_and_progress(tmp_path):
    from rwkv_cpp.convert import save_safetensors

    save_safetensors(str(tmp_path / "m.safetensors"), _model("5.2"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rwkv_cpp.convert", *map(str, args)],
                              capture_output=True, text=True, timeout=120)
    res = cli(tmp_path / "m.safetensors", tmp_path / "q.gguf", "--type", "q8_0", "--quantize-head")
    assert res.returncode == 0, res.stderr
    assert "RWKV-5.2 Q8_0" in res.stderr
    assert read_gguf(tmp_path / "q.gguf").tensors["head.weight"].type == 8
    res = cli(tmp_path / "m.safetensors", tmp_path / "b.gguf", "--type", "BF16")
    assert res.returncode == 1 and "BF16 output is not supported" in res.stderr
    help_text = cli("--help").stdout
    for word in ("Q5_1", "Q4_0", "default FP16", "BF16", "--quantize-head", "--lora", "--lora-alpha"):
        assert word in help_text


def test_progress_counts_stored_bytes(tmp_path):
    seen = []
    ckpt = Checkpoint.from_arrays(_model("7.0"))
    summary = convert_checkpoint(ckpt, str(tmp_path / "m.gguf"), "Q4_0", progress=lambda d, t, n: seen.append((d, t)))
    assert seen[0] == (0, seen[-1][1]) and seen[-1][0] == seen[-1][1]
    assert seen[-1][1] < summary.bytes_written  # the tensor bytes, without header and padding


def test_quantize_rows_matches_the_quantizer_and_checks_sizes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    q = encode("x", x, OUTPUT_TYPES["Q8_0"][1])
    assert q.nbytes == 3 * 2 * 34
    # Q8_0 by its definition: d = max|x| / 127 per block of 32, q = round(x / d)
    blocks = x.reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1) / 127).astype(np.float16)
    raw = q.reshape(-1, 34)
    assert np.array_equal(raw[:, :2].copy().view(np.float16).ravel(), d)
    want = np.round(blocks / d.astype(np.float32)[:, None])
    assert np.abs(raw[:, 2:].view(np.int8) - want).max() <= 1
    dst = np.empty(10, dtype=np.uint8)
    for n_per_row, size in ((64, 10), (48, 3 * 2 * 34)):
        buf = ffi.new("char[]", 256)
        status = lib.rwkv_quantize_rows(lib.RWKV_TYPE_Q8_0, ffi.cast("const float *", ffi.from_buffer(x)), 3,
                                        n_per_row, ffi.from_buffer(dst), size, 1, buf, 256)
        assert status == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
        assert b"rows" in ffi.string(buf)


def _peak_bytes(tmp_path, n_layer):
    """(peak Python-side allocation while converting, model bytes); numpy
    registers its buffers with tracemalloc."""
    from rwkv_cpp.convert import save_safetensors

    sd = make_state_dict("6.0", 4096, 256, n_layer, head_size=32, seed=3)
    src = tmp_path / f"m{n_layer}.safetensors"
    save_safetensors(str(src), sd)
    total = sum(v.nbytes for v in sd.values())
    del sd
    tracemalloc.start()
    try:
        convert_file(src, tmp_path / "m.gguf", "Q5_1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, total


def test_peak_memory_does_not_grow_with_the_model(tmp_path):
    """Four times the layers, four times the bytes, the same peak: the
    converter holds one tensor (and its encoding) at a time."""
    small_peak, small_total = _peak_bytes(tmp_path, 3)
    big_peak, big_total = _peak_bytes(tmp_path, 12)
    assert big_total > 2.5 * small_total
    assert big_peak < 1.1 * small_peak, (small_peak, big_peak)
    assert big_peak < big_total, (big_peak, big_total)
