"""Tests of the torch-free converter (rwkv_cpp.convert).

torch is used here only as the reference: to write real .pth files with
torch.save and to compute what the official package computes at load time.
Only the tests marked ``needs_torch`` need it: without torch they skip (and
under CI fail, tests/skip_policy.py); the safetensors, GGUF, version
detection and error tests run anyway.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is needed to write .pth files (the reference)")

from rwkv_cpp.convert import (  # noqa: E402
    ConvertError, GGUFWriter, RWKV4Params, SourceTensor, UnsafePickleError,
    UnsupportedVersionError, bf16_bits_to_f32, convert_file, convert_state_dict,
    decay_transform, detect_version, emb_with_ln0, f32_to_bf16_bits,
    make_rwkv4_state_dict, normalize_name, normalize_names, open_checkpoint,
    open_pth, open_safetensors, rwkv4_expected_shapes, save_safetensors,
    write_safetensors)
from rwkv_cpp.convert.gguf_constants import GGMLType, GGUFValueType  # noqa: E402

from gguf_reader import read_gguf  # noqa: E402

# A small model with every dimension distinct, so a transposed or swapped
# shape cannot go unnoticed: V=260, D=32, A=48 (n_att != n_embed), F=80.
V, D, A, FF, L = 260, 32, 48, 80, 2


@pytest.fixture(scope="module")
def sd():
    """A random RWKV-4 state dict (float32 numpy arrays, official names)."""
    return make_rwkv4_state_dict(V, D, L, n_ffn=FF, seed=3, n_att=A)


# the source dtypes of .pth checkpoints, by name (parameters need no torch)
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def to_torch(sd, dtype="fp32"):
    dtype = getattr(torch, TORCH_DTYPES[dtype])
    return {k: torch.from_numpy(v).to(dtype) for k, v in sd.items()}


def bits16(t):
    """Raw 16-bit patterns of a bf16/fp16 torch tensor as numpy uint16."""
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


HF_NAMES = {
    "emb.weight": "rwkv.embeddings.weight",
    "ln_out.weight": "rwkv.ln_out.weight", "ln_out.bias": "rwkv.ln_out.bias",
    "head.weight": "head.weight",
}
HF_BLOCK = {
    "ln0.weight": "pre_ln.weight", "ln0.bias": "pre_ln.bias",
    "ln1.weight": "ln1.weight", "ln1.bias": "ln1.bias",
    "ln2.weight": "ln2.weight", "ln2.bias": "ln2.bias",
    "att.time_decay": "attention.time_decay", "att.time_first": "attention.time_first",
    "att.time_mix_k": "attention.time_mix_key", "att.time_mix_v": "attention.time_mix_value",
    "att.time_mix_r": "attention.time_mix_receptance",
    "att.key.weight": "attention.key.weight", "att.value.weight": "attention.value.weight",
    "att.receptance.weight": "attention.receptance.weight",
    "att.output.weight": "attention.output.weight",
    "ffn.time_mix_k": "feed_forward.time_mix_key",
    "ffn.time_mix_r": "feed_forward.time_mix_receptance",
    "ffn.key.weight": "feed_forward.key.weight", "ffn.value.weight": "feed_forward.value.weight",
    "ffn.receptance.weight": "feed_forward.receptance.weight",
}


def hf_name(official):
    """The Hugging Face transformers name of an official RWKV-4 name."""
    if official in HF_NAMES:
        return HF_NAMES[official]
    _, layer, rest = official.split(".", 2)
    return f"rwkv.blocks.{layer}.{HF_BLOCK[rest]}"


# --------------------------------------------------------------------------
# .pth reader
# --------------------------------------------------------------------------

@needs_torch
def test_pth_reader_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 9, generator=g)
    tensors = {
        "f32": torch.randn(5, 3, generator=g),
        "f16": torch.randn(4, 6, generator=g).half(),
        "bf16": torch.randn(3, 1, 8, generator=g).bfloat16(),
        "f64": torch.randn(4, generator=g).double(),
        "transposed": base.t(),                      # stride (1, 9)
        "sliced": base[2:6, 1::3],                   # offset 19, stride (9, 3)
        "bf16_view": torch.randn(6, 10, generator=g).bfloat16()[1:, ::2].t(),
        "expanded_ok": torch.randn(3, 4, generator=g)[:1].expand(2, 4),  # stride 0
        "param": torch.nn.Parameter(torch.randn(3, generator=g)),
        "scalar_like": torch.randn(1, 1, 5, generator=g),
    }
    tensors["shares_base"] = base[1]
    path = tmp_path / "t.pth"
    torch.save(tensors, path)
    with open_pth(path) as ckpt:
        assert list(ckpt.tensors) == list(tensors)
        for name, ref in tensors.items():
            src = ckpt.tensors[name]
            ref = ref.detach()
            assert src.shape == tuple(ref.shape), name
            raw = src.raw()
            if ref.dtype in (torch.bfloat16, torch.float16):
                assert np.array_equal(raw.view(np.uint16), bits16(ref)), name
            else:
                assert np.array_equal(raw, ref.contiguous().numpy()), name
            want = ref.float().contiguous().numpy()
            assert np.array_equal(src.to_f32().view(np.uint32), want.view(np.uint32)), name
    assert ckpt.tensors["bf16"].dtype == "BF16"
    assert ckpt.tensors["f16"].dtype == "F16"


@needs_torch
def test_pth_nested_state_dict_and_non_tensor(tmp_path):
    path = tmp_path / "nested.pth"
    torch.save({"state_dict": {"a": torch.ones(2)}, "epoch": 3}, path)
    with open_pth(path) as ckpt:
        assert list(ckpt.tensors) == ["a"]
    path = tmp_path / "strategy.pth"
    torch.save({"emb.weight": torch.ones(2, 2), "_strategy": "cpu fp32"}, path)
    with pytest.raises(ConvertError, match="'_strategy' is a str.*already converted"):
        open_pth(path)
    path = tmp_path / "ints.pth"
    torch.save({"steps": torch.arange(3)}, path)
    with pytest.raises(ConvertError, match="'steps' has storage type torch.LongStorage"):
        open_pth(path)


@needs_torch
def test_pth_refuses_broadcast_beyond_storage(tmp_path):
    path = tmp_path / "bcast.pth"
    torch.save({"big": torch.ones(1, 3).expand(1000, 3)}, path)
    with pytest.raises(ConvertError, match=r"'big': size \(1000, 3\) has 3000 elements, "
                                           "more than its storage of 3"):
        open_pth(path)


def _zip_with_pickle(path, pkl: bytes, prefix="archive"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        z.writestr(f"{prefix}/byteorder", "little")


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "__builtin__.eval",
                                  "posix.system"])
def test_malicious_pickle_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('x')"
    if kind == "os.system":
        # hand-written protocol-0 pickle: GLOBAL 'os system', call it
        pkl = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    elif kind == "builtins.eval":
        pkl = pickle.dumps({"emb.weight": _Evil(eval, code)}, protocol=4)
    elif kind == "__builtin__.eval":  # protocol 2 records Python 2 module names
        pkl = pickle.dumps({"emb.weight": _Evil(eval, code)}, protocol=2)
    else:  # what pickle records for os.system on POSIX
        pkl = pickle.dumps({"x": _Evil(os.system, f"touch {marker}")}, protocol=4)
        if os.name != "posix":
            pytest.skip("os.system is posix.system only on POSIX")
    path = tmp_path / "evil.pth"
    _zip_with_pickle(path, pkl)
    with pytest.raises(UnsafePickleError, match=f"refusing to load: the pickle "
                                                f"references global '{kind}'"):
        open_pth(path)
    with pytest.raises(ConvertError):  # also through the converter
        convert_file(path, tmp_path / "out.gguf")
    assert not marker.exists()
    assert not (tmp_path / "out.gguf").exists()


@needs_torch
def test_truncated_and_corrupt_pth(tmp_path, sd):
    good = tmp_path / "good.pth"
    torch.save(to_torch(sd), good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match="truncated or corrupt"):
        convert_file(cut, tmp_path / "o.gguf")
    # flip one byte of the head.weight storage: CRC check fails on read
    with zipfile.ZipFile(good) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    # the data follows the local header (30 bytes + name + its own extra field)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    bad = bytearray(data)
    bad[start + 10] ^= 0xFF
    flipped = tmp_path / "flipped.pth"
    flipped.write_bytes(bytes(bad))
    with pytest.raises(ConvertError, match="truncated or corrupt"):
        convert_file(flipped, tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()


@needs_torch
def test_storage_size_mismatch(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"a": torch.ones(4)}, path)
    short = tmp_path / "short.pth"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(short, "w") as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            if info.filename.endswith("/data/0"):
                blob = blob[:8]
            zout.writestr(info.filename, blob)
    with pytest.raises(ConvertError, match="holds 8 bytes but the pickle declares 4 x "
                                           "FloatStorage = 16 bytes"):
        open_pth(short)


def _rewrite_pickle(src, dst, old: bytes, new: bytes):
    """Copy a .pth, replacing bytes of its data.pkl (exactly one occurrence)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            if info.filename.endswith("data.pkl"):
                assert blob.count(old) == 1
                blob = blob.replace(old, new)
            zout.writestr(info.filename, blob)


@needs_torch
def test_tensor_record_out_of_storage(tmp_path):
    path = tmp_path / "v.pth"
    torch.save({"a": torch.ones(6)[1:5]}, path)   # storage 6, offset 1, size (4,)
    bad = tmp_path / "bad.pth"
    _rewrite_pickle(path, bad, b"K\x01K\x04\x85", b"K\x03K\x04\x85")  # offset 3
    with pytest.raises(ConvertError, match=r"tensor 'a': size \(4,\), stride \(1,\) and "
                                           "offset 3 address element 6, beyond its "
                                           "storage of 6 elements"):
        open_pth(bad)
    _rewrite_pickle(path, bad, b"K\x01K\x04\x85", b"K\x01K\x09\x85")  # size (9,)
    with pytest.raises(ConvertError, match="has 9 elements, more than its storage of 6"):
        open_pth(bad)
    _rewrite_pickle(path, bad, b"ctorch\nFloatStorage\n", b"ctorch\nCudaStorage\n")
    with pytest.raises(UnsafePickleError, match="'torch.CudaStorage'"):
        open_pth(bad)


@needs_torch
def test_legacy_and_unknown_formats(tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ConvertError, match="legacy PyTorch serialization format"):
        convert_file(legacy, tmp_path / "o.gguf")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not a model")
    with pytest.raises(ConvertError, match="unrecognised file format"):
        convert_file(junk, tmp_path / "o.gguf")
    plain_zip = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain_zip, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ConvertError, match="exactly one data.pkl"):
        convert_file(plain_zip, tmp_path / "o.gguf")


# --------------------------------------------------------------------------
# safetensors and bf16 helpers
# --------------------------------------------------------------------------

@needs_torch
def test_bf16_rounding_matches_torch():
    special = np.array([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38,
                        1e-40, -1e-41, 1.00390625, 1.01171875, 65504.0], np.float32)
    values = np.concatenate([special, np.random.default_rng(0).normal(0, 3, 10000)
                             .astype(np.float32)])
    ref = bits16(torch.from_numpy(values).bfloat16())
    ours = f32_to_bf16_bits(values)
    finite = ~np.isnan(values)
    assert np.array_equal(ours[finite], ref[finite])
    assert np.isnan(bf16_bits_to_f32(ours[~finite])).all()
    back = bf16_bits_to_f32(ref)
    assert np.array_equal(back[finite], torch.from_numpy(values).bfloat16().float()
                          .numpy()[finite])


@needs_torch
@pytest.mark.parametrize("dtype", [None, "F32", "F16", "BF16"])
def test_safetensors_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(1)
    arrays = {"a": rng.normal(size=(3, 5)).astype(np.float32),
              "b": rng.normal(size=(7,)).astype(np.float16),
              "c": rng.normal(size=(2, 1, 4)).astype(np.float32)}
    path = tmp_path / "x.safetensors"
    write_safetensors(path, arrays, dtype=dtype, metadata={"format": "pt"})
    with open_safetensors(path) as ckpt:
        assert ckpt.metadata == {"format": "pt"}
        assert list(ckpt.tensors) == list(arrays)
        for name, arr in arrays.items():
            src = ckpt.tensors[name]
            assert src.shape == arr.shape
            if dtype == "BF16":
                want = torch.from_numpy(arr.astype(np.float32)).bfloat16().float().numpy()
            elif dtype is None:
                want = arr.astype(np.float32)
            else:
                want = arr.astype({"F32": np.float32, "F16": np.float16}[dtype]).astype(np.float32)
            assert np.array_equal(src.to_f32(), want), name
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0   # the data section starts 8-byte aligned


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("header,data,message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8,
     "spans 4 bytes but shape"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8,
     "ends at byte 16 of a data section of 8"),
    ({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8,
     "dtype 'I64'"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4,
     "invalid shape"),
])
def test_safetensors_corrupt(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_safetensors_bytes(header, data))
    with pytest.raises(ConvertError, match=message):
        open_safetensors(path)


def test_safetensors_truncated_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ConvertError, match="header length 1000 is invalid"):
        open_checkpoint(path)


# --------------------------------------------------------------------------
# names, versions, shapes
# --------------------------------------------------------------------------

def test_key_normalisation(sd):
    for name in sd:
        assert normalize_name(name) == name
        assert normalize_name(hf_name(name)) == name
        assert normalize_name("module._orig_mod." + name) == name
    assert normalize_name("rwkv.blocks.11.attention.time_mix_key") == "blocks.11.att.time_mix_k"
    assert normalize_name("something.else") == "something.else"
    with pytest.raises(ConvertError, match="both map to 'emb.weight'"):
        normalize_names(["emb.weight", "rwkv.embeddings.weight"])


def _v5_keys(version):
    H, N = 2, 16
    keys = {"emb.weight": (V, D), "blocks.0.ln0.weight": (D,), "head.weight": (V, D)}
    for i in range(2):
        p = f"blocks.{i}.att."
        keys[p + "ln_x.weight"] = (D,)
        keys[p + "key.weight"] = (D, D)
        keys[p + "time_mix_k"] = (1, 1, D)
        keys[p + "time_decay"] = (H, N) if version == "5.2" else (H,)
        keys[p + "time_faaaa" if version == "5.2" else p + "time_first"] = (H, N)
        if version in ("5.1", "5.2"):
            keys[p + "gate.weight"] = (D, D)
    return keys


def test_version_detection():
    assert detect_version(rwkv4_expected_shapes(RWKV4Params(V, D, L, A, FF))) == "4"
    for version in ("5.0", "5.1", "5.2"):
        assert detect_version(_v5_keys(version)) == version
    # 5.2 is decided by any layer's time_decay, whatever the key order
    keys = _v5_keys("5.2")
    keys["blocks.0.att.time_decay"] = (2,)
    assert detect_version(dict(reversed(list(keys.items())))) == "5.2"
    v6 = dict(_v5_keys("5.2"), **{"blocks.0.att.time_maa_x": (1, 1, D),
                                  "blocks.0.att.time_maa_w1": (D, 160)})
    assert detect_version(v6) == "6.0"
    v7 = {"emb.weight": (V, D), "blocks.0.att.x_r": (1, 1, D), "blocks.0.att.w0": (1, 1, D),
          "blocks.0.att.r_k": (2, 16), "blocks.0.att.ln_x.weight": (D,)}
    assert detect_version(v7) == "7.0"
    with pytest.raises(ConvertError, match="match no RWKV version"):
        detect_version({"model.layers.0.self_attn.q_proj.weight": (8, 8)})


@pytest.mark.parametrize("version", ["5.0", "5.1", "5.2", "6.0", "7.0"])
def test_incomplete_wkv_checkpoints_name_their_version(tmp_path, version):
    """RWKV-5/6/7 checkpoints that lack tensors: the error names the
    detected version and what is missing."""
    if version.startswith("5"):
        keys = _v5_keys(version)
    elif version == "6.0":
        keys = dict(_v5_keys("5.2"), **{"blocks.1.att.time_maa_x": (1, 1, D)})
    else:
        keys = {"emb.weight": (V, D), "blocks.0.att.x_r": (1, 1, D),
                "blocks.0.att.r_k": (2, 16)}
    arrays = {k: np.zeros(s, np.float32) for k, s in keys.items()}
    path = tmp_path / "m.safetensors"
    write_safetensors(path, arrays)
    with pytest.raises(ConvertError, match=f"RWKV-{version} checkpoint") as info:
        convert_file(path, tmp_path / "o.gguf")
    assert "missing tensor" in str(info.value)
    assert not (tmp_path / "o.gguf").exists()


def test_missing_wrong_shape_unexpected(tmp_path, sd):
    broken = dict(sd)
    del broken["blocks.1.ffn.value.weight"]
    broken["blocks.0.att.output.weight"] = np.zeros((A, D), np.float32)   # transposed
    broken["blocks.1.att.time_mix_r"] = np.zeros((1, 2, D), np.float32)  # not squeezable
    broken["blocks.0.att.extra"] = np.zeros(3, np.float32)
    broken["blocks.1.ln0.weight"] = np.zeros(D, np.float32)
    with pytest.raises(ConvertError) as info:
        convert_state_dict(broken, tmp_path / "o.gguf")
    msg = str(info.value)
    assert f"missing tensor 'blocks.1.ffn.value.weight' (expected shape ({D}, {FF}))" in msg
    assert (f"tensor 'blocks.0.att.output.weight': expected shape ({D}, {A}), "
            f"found ({A}, {D})") in msg
    assert f"tensor 'blocks.1.att.time_mix_r': expected shape ({D}), found (1, 2, {D})" in msg
    assert "unexpected tensor 'blocks.0.att.extra' (shape (3))" in msg
    assert "unexpected tensor 'blocks.1.ln0.weight'" in msg
    assert not (tmp_path / "o.gguf").exists()


def test_time_params_accept_any_squeezable_shape(tmp_path, sd):
    alt = dict(sd)
    alt["blocks.0.att.time_mix_k"] = sd["blocks.0.att.time_mix_k"].reshape(D)
    alt["blocks.0.att.time_decay"] = sd["blocks.0.att.time_decay"].reshape(1, 1, A)
    alt["blocks.1.ffn.time_mix_r"] = sd["blocks.1.ffn.time_mix_r"].reshape(1, D)
    convert_state_dict(alt, tmp_path / "a.gguf")
    convert_state_dict(sd, tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


# --------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------

@needs_torch
def test_ln0_bf16_rounding_matches_torch():
    """bf16(LayerNorm(emb)) as the official package computes it in bf16.

    Measured (5 seeds x D in 64..1024, 2000 rows each; ~2e7 elements): about
    1.5e-5 of the elements differ, most by one bf16 ulp (values near a
    rounding tie, where torch's float32 arithmetic and our exact float64 one
    round differently), a few by more ulps but only where x*w + b cancels to
    ~1e-7 and torch's own float32 error dominates.
    """
    diff_elems = total = diff_rows = rows = 0
    for seed, dim in [(0, 64), (1, 256), (2, 1024)]:
        sdx = make_rwkv4_state_dict(2000, dim, 1, seed=seed)
        e, w, b = (torch.from_numpy(sdx[k]).bfloat16() for k in
                   ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"))
        ref = bits16(F.layer_norm(e, (dim,), weight=w, bias=b))
        src = [SourceTensor(n, tuple(t.shape), "BF16", lambda t=t: bits16(t))
               for n, t in (("e", e), ("w", w), ("b", b))]
        ours = f32_to_bf16_bits(emb_with_ln0(*src))
        diff = ours != ref
        total += diff.size
        diff_elems += int(diff.sum())
        rows += diff.shape[0]
        diff_rows += int(diff.any(axis=1).sum())
        ulps = np.abs(ours[diff].astype(np.int32) - ref[diff].astype(np.int32))
        absdiff = np.abs(bf16_bits_to_f32(ours[diff]) - bf16_bits_to_f32(ref[diff]))
        assert np.all((ulps == 1) | (absdiff < 1e-6))
    print(f"\nln0 bf16: {diff_elems}/{total} elements ({diff_elems / total:.1e}) and "
          f"{diff_rows}/{rows} rows differ from torch")
    assert diff_elems / total < 1e-4


@needs_torch
def test_ln0_fp32_close_to_torch(sd):
    e, w, b = (torch.from_numpy(sd[k]) for k in
               ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"))
    ref = F.layer_norm(e, (D,), weight=w, bias=b).numpy()
    ours = emb_with_ln0(*(SourceTensor.from_numpy(k, sd[k]) for k in
                          ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias")))
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)


@needs_torch
def test_time_decay_transform_matches_torch():
    x = torch.linspace(-8.0, 4.0, 20001)
    ref = (-torch.exp(x.float())).numpy()
    ours = decay_transform(x.numpy())
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=2.5e-7, atol=0)
    assert np.mean(ours == ref) > 0.95   # torch's exp is not always correctly rounded


# --------------------------------------------------------------------------
# full conversion
# --------------------------------------------------------------------------

def _expected_tensors(sd_t, out_type):
    """What the GGUF must hold, computed with torch from the source tensors."""
    mat = np.float32 if out_type == "FP32" else np.float16
    want = {}
    emb = F.layer_norm(sd_t["emb.weight"], (D,), weight=sd_t["blocks.0.ln0.weight"],
                       bias=sd_t["blocks.0.ln0.bias"])
    want["emb.weight"] = emb.float().numpy().astype(mat)
    for name, t in sd_t.items():
        if name == "emb.weight" or ".ln0." in name:
            continue
        if name.endswith("time_decay"):
            want[name] = (-torch.exp(t.float())).numpy()
        elif t.dim() == 2:
            want[name] = t.float().numpy().astype(mat)
        else:
            want[name] = t.float().reshape(-1).numpy()
    return want


@needs_torch
@pytest.mark.parametrize("src_dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("out_type", ["FP32", "FP16"])
def test_convert_pth(tmp_path, sd, src_dtype, out_type):
    sd_t = to_torch(sd, src_dtype)
    src = tmp_path / "model.pth"
    torch.save(sd_t, src)
    out = tmp_path / "model.gguf"
    seen = []
    summary = convert_file(src, out, out_type, progress=lambda d, t, n: seen.append((d, t)))
    assert (summary.version, summary.n_vocab, summary.n_embed, summary.n_layer,
            summary.n_att, summary.n_ffn, summary.type) == ("4", V, D, L, A, FF, out_type)
    assert summary.bytes_written == out.stat().st_size
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1]
    g = read_gguf(out)
    assert g.kv == {
        "general.architecture": "rwkv4", "general.alignment": 32,
        "general.file_type": 0 if out_type == "FP32" else 1, "rwkv.format_version": 1,
        "rwkv.version": "4", "rwkv.n_vocab": V, "rwkv.n_embed": D, "rwkv.n_layer": L,
        "rwkv.n_att": A, "rwkv.n_ffn": FF, "rwkv.layer_norm_epsilon": np.float32(1e-5),
        "rwkv.tokenizer": "", "rwkv.emb_ln0_applied": True}
    assert g.kv_types["rwkv.n_vocab"] == GGUFValueType.UINT32
    assert g.kv_types["rwkv.layer_norm_epsilon"] == GGUFValueType.FLOAT32
    assert g.kv_types["rwkv.emb_ln0_applied"] == GGUFValueType.BOOL
    want = _expected_tensors(sd_t, out_type)
    assert set(g.tensors) == set(want)
    assert list(g.tensors)[0] == "emb.weight" and list(g.tensors)[-1] == "head.weight"
    for name, ref in want.items():
        info, got = g.tensors[name], g.tensor(name)
        assert info.shape == ref.shape and info.ne == tuple(reversed(ref.shape)), name
        assert got.dtype == ref.dtype, name
        if name == "emb.weight" and src_dtype != "fp32":
            mismatch = np.mean(got != ref)
            assert mismatch < 2e-3, (name, mismatch)  # rare rounding ties only
        elif name == "emb.weight" or name.endswith("time_decay"):
            np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32),
                                       rtol=1e-6, atol=2e-6, err_msg=name)
        else:
            assert np.array_equal(got, ref), name


@needs_torch
@pytest.mark.parametrize("src_dtype", list(TORCH_DTYPES))
def test_matches_official_package_weights(tmp_path, sd, src_dtype, monkeypatch):
    """Every stored tensor equals what the official rwkv package holds after
    loading the same .pth with strategy 'cpu fp32' (its load-time transforms:
    ln0 folded into emb in the source dtype, time_decay = -exp(.), squeezes)."""
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    rwkv_model = pytest.importorskip("rwkv.model")
    src = tmp_path / "official.pth"
    torch.save(to_torch(sd, src_dtype), src)
    model = rwkv_model.RWKV(model=str(src), strategy="cpu fp32", verbose=False)
    convert_file(src, tmp_path / "o.gguf", "FP32")
    g = read_gguf(tmp_path / "o.gguf")
    assert set(g.tensors) == set(model.w)
    for name, info in g.tensors.items():
        ref = model.w[name]
        if ref.dim() == 2 and name != "emb.weight":
            ref = ref.t()   # the official loader transposes matrices
        ref = ref.float().contiguous().numpy().reshape(info.shape)
        got = g.tensor(name)
        if name.endswith("time_decay"):
            np.testing.assert_allclose(got, ref, rtol=2.5e-7, atol=0, err_msg=name)
        elif name == "emb.weight" and src_dtype == "fp32":
            # float64 layer norm vs torch's float32 one: ulp-level differences
            np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
        elif name == "emb.weight":
            assert np.mean(got != ref) < 2e-3, name   # rare bf16/fp16 rounding ties
        else:
            assert np.array_equal(got, ref), name


@needs_torch
def test_hf_safetensors_equals_official_pth(tmp_path, sd):
    sd_bf16 = to_torch(sd, "bf16")
    torch.save(sd_bf16, tmp_path / "official.pth")
    save_safetensors(tmp_path / "hf.safetensors", {hf_name(k): v for k, v in sd.items()},
                     dtype="BF16")
    s1 = convert_file(tmp_path / "official.pth", tmp_path / "a.gguf")
    s2 = convert_file(tmp_path / "hf.safetensors", tmp_path / "b.gguf")
    assert s1.source_format == "pth" and s2.source_format == "safetensors"
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    # HF names through a .pth, with DataParallel / torch.compile prefixes
    torch.save({"module." + hf_name(k): v for k, v in sd_bf16.items()}, tmp_path / "hf.pth")
    convert_file(tmp_path / "hf.pth", tmp_path / "c.gguf")
    assert (tmp_path / "c.gguf").read_bytes() == (tmp_path / "a.gguf").read_bytes()


def test_tokenizer_choice(tmp_path):
    sd_small = make_rwkv4_state_dict(256, 16, 1)
    assert convert_state_dict(sd_small, tmp_path / "a.gguf").tokenizer == "bytes"
    assert read_gguf(tmp_path / "a.gguf").kv["rwkv.tokenizer"] == "bytes"
    assert convert_state_dict(sd_small, tmp_path / "a.gguf", tokenizer="world").tokenizer == "world"
    assert convert_state_dict(sd_small, tmp_path / "a.gguf", tokenizer="none").tokenizer == ""
    with pytest.raises(ConvertError, match="unknown tokenizer"):
        convert_state_dict(sd_small, tmp_path / "a.gguf", tokenizer="gpt2")
    with pytest.raises(ConvertError, match="unknown output type"):
        convert_state_dict(sd_small, tmp_path / "a.gguf", out_type="Q2_K")


def test_failed_conversion_leaves_no_output(tmp_path, sd):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous content")
    huge = dict(sd)
    huge["head.weight"] = sd["head.weight"] * 1e6       # overflows FP16 at the very end
    with pytest.raises(ConvertError, match="'head.weight'.*overflow FP16"):
        convert_state_dict(huge, out, out_type="FP16")
    assert out.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]


def test_random_model_is_deterministic_and_official(sd):
    again = make_rwkv4_state_dict(V, D, L, n_ffn=FF, seed=3, n_att=A)
    assert list(again) == list(sd)
    assert all(np.array_equal(again[k], sd[k]) for k in sd)
    assert sd["blocks.0.att.time_mix_k"].shape == (1, 1, D)
    assert sd["blocks.0.att.time_decay"].shape == (A,)
    assert all(v.dtype == np.float32 for v in sd.values())
    decay = sd["blocks.0.att.time_decay"]
    assert decay.min() < -4 and decay.max() > 2
    mix = sd["blocks.1.att.time_mix_v"]
    assert 0 < mix.min() and mix.max() < 1


# --------------------------------------------------------------------------
# GGUF writer and reader
# --------------------------------------------------------------------------

def test_gguf_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tensors = [("a", rng.normal(size=(3, 5)).astype(np.float32), GGMLType.F32),
               ("bb", rng.normal(size=(7,)).astype(np.float16), GGMLType.F16),
               ("x" * 63, rng.normal(size=(2, 3, 4)).astype(np.float32), GGMLType.F32)]
    path = tmp_path / "t.gguf"
    with open(path, "wb") as f:
        w = GGUFWriter(f)
        w.add_string("general.architecture", "test")
        w.add_u32("general.alignment", 32)
        w.add_u32("u32", 7)
        w.add_i32("i32", -7)
        w.add_u64("u64", 1 << 40)
        w.add_f32("f32", 0.5)
        w.add_bool("flag", False)
        w.add_string("unicode", "héllo")
        w.add_array("arr", GGUFValueType.INT32, [1, -2, 3])
        w.add_array("strs", GGUFValueType.STRING, ["a", "", "ccc"])
        for name, arr, gtype in tensors:
            w.add_tensor_info(name, arr.shape, gtype)
        w.write_header()
        for name, arr, _ in tensors:
            w.write_tensor(name, arr)
        assert w.finish() == f.tell()
    g = read_gguf(path)
    assert g.version == 3
    assert g.kv == {"general.architecture": "test", "general.alignment": 32, "u32": 7,
                    "i32": -7, "u64": 1 << 40, "f32": 0.5, "flag": False,
                    "unicode": "héllo", "arr": [1, -2, 3], "strs": ["a", "", "ccc"]}
    assert g.data_offset % 32 == 0
    for name, arr, gtype in tensors:
        info = g.tensors[name]
        assert info.offset % 32 == 0 and info.type == gtype
        assert info.ne == tuple(reversed(arr.shape))
        assert np.array_equal(g.tensor(name), arr)
    assert path.stat().st_size % 32 == 0


def test_gguf_writer_errors(tmp_path):
    w = GGUFWriter(io.BytesIO())
    with pytest.raises(ValueError, match="must have 1..63 bytes"):
        w.add_tensor_info("y" * 64, (2,), GGMLType.F32)
    w.add_tensor_info("a", (2,), GGMLType.F32)
    w.add_tensor_info("b", (2,), GGMLType.F32)
    with pytest.raises(ValueError, match="duplicate tensor"):
        w.add_tensor_info("a", (2,), GGMLType.F32)
    w.add_u32("k", 1)
    with pytest.raises(ValueError, match="duplicate GGUF key"):
        w.add_u32("k", 2)
    w.write_header()
    with pytest.raises(RuntimeError, match="out of order"):
        w.write_tensor("b", np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="declared F32"):
        w.write_tensor("a", np.zeros(3, np.float32))
    w.write_tensor("a", np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="'b'.*never written"):
        w.finish()


def test_gguf_reader_rejects_corrupt(tmp_path, sd):
    good = tmp_path / "g.gguf"
    convert_state_dict(sd, good)
    data = good.read_bytes()
    cases = {"magic": b"GGUX" + data[4:], "truncated": data[: len(data) - 100],
             "header_cut": data[:200],
             "huge_count": data[:8] + struct.pack("<Q", 1 << 60) + data[16:]}
    messages = {"magic": "bad magic", "truncated": "past the end",
                "header_cut": "truncated GGUF", "huge_count": "implausible counts"}
    for case, blob in cases.items():
        p = tmp_path / f"{case}.gguf"
        p.write_bytes(blob)
        with pytest.raises(ConvertError, match=messages[case]):
            read_gguf(p)


def _ggml_base_library():
    libggml = pytest.importorskip("libggml")
    folder = os.path.dirname(libggml.__file__)
    for sub in ("lib64", "lib"):
        path = os.path.join(folder, sub, "libggml-base.so")
        if os.path.exists(path):
            return ctypes.CDLL(path)
    pytest.skip("libggml-base.so not found")


def test_ggml_reads_our_file(tmp_path, sd):
    """ggml's own gguf reader loads the file and sees the same data."""
    lib = _ggml_base_library()

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]

    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    sigs = {"gguf_init_from_file": (vp, [ctypes.c_char_p, Params]),
            "gguf_get_n_kv": (i64, [vp]), "gguf_get_n_tensors": (i64, [vp]),
            "gguf_get_key": (ctypes.c_char_p, [vp, i64]),
            "gguf_get_kv_type": (ctypes.c_int, [vp, i64]),
            "gguf_get_tensor_name": (ctypes.c_char_p, [vp, i64]),
            "gguf_get_tensor_type": (ctypes.c_int, [vp, i64]),
            "gguf_get_alignment": (ctypes.c_size_t, [vp]),
            "ggml_get_tensor": (vp, [vp, ctypes.c_char_p]),
            "ggml_get_data": (vp, [vp]), "ggml_nbytes": (ctypes.c_size_t, [vp]),
            "gguf_free": (None, [vp]), "ggml_free": (None, [vp])}
    for name, (res, args) in sigs.items():
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    for out_type in ("FP32", "FP16"):
        path = tmp_path / f"m-{out_type}.gguf"
        convert_state_dict(sd, path, out_type=out_type)
        ours = read_gguf(path)
        ctx = ctypes.c_void_p()
        g = lib.gguf_init_from_file(str(path).encode(), Params(False, ctypes.pointer(ctx)))
        assert g, "ggml refused the file"
        try:
            assert lib.gguf_get_alignment(g) == 32
            keys = {lib.gguf_get_key(g, i).decode(): lib.gguf_get_kv_type(g, i)
                    for i in range(lib.gguf_get_n_kv(g))}
            assert keys == {k: int(t) for k, t in ours.kv_types.items()}
            assert lib.gguf_get_n_tensors(g) == len(ours.tensors)
            for i, name in enumerate(ours.tensors):
                assert lib.gguf_get_tensor_name(g, i).decode() == name
                assert lib.gguf_get_tensor_type(g, i) == ours.tensors[name].type
                t = lib.ggml_get_tensor(ctx, name.encode())
                blob = ctypes.string_at(lib.ggml_get_data(t), lib.ggml_nbytes(t))
                assert blob == ours.tensor(name).tobytes(), name
        finally:
            lib.gguf_free(g)
            lib.ggml_free(ctx)


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rwkv_cpp.convert", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_cli(tmp_path, sd):
    res = _cli("--help")
    assert res.returncode == 0
    for word in ("IN", "OUT", "--type", "FP16", "--tokenizer", "world", "--quiet", "ln0"):
        assert word in res.stdout
    src = tmp_path / "m.safetensors"
    save_safetensors(src, sd, dtype="BF16")
    out = tmp_path / "m.gguf"
    res = _cli(src, out, "--type", "fp16", "--tokenizer", "World")
    assert res.returncode == 0, res.stderr
    assert "RWKV-4 FP16" in res.stderr and f"n_layer={L}" in res.stderr
    g = read_gguf(out)
    assert g.kv["general.file_type"] == 1 and g.kv["rwkv.tokenizer"] == "world"
    res = _cli(src, tmp_path / "q.gguf", "-q")
    assert res.returncode == 0 and res.stderr == "" and res.stdout == ""
    res = _cli(tmp_path / "missing.pth", tmp_path / "x.gguf")
    assert res.returncode == 1 and res.stderr.startswith("error:")
    res = _cli(src, out, "--type", "Q2_K")
    assert res.returncode == 2
