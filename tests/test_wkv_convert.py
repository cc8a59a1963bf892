"""RWKV-5/6/7 files: what the converter writes (metadata, transforms,
shapes), what the quantizer keeps unquantized, and the clear errors of the
converter and of the loader for malformed checkpoints and files."""

import math
import subprocess
import sys

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import ModelFormatError
from rwkv_cpp.convert import ConvertError, convert_state_dict
from rwkv_cpp.convert.gguf_constants import GGMLType
from rwkv_cpp.convert.random_model import (make_rwkv5_state_dict, make_rwkv6_state_dict,
                                           make_rwkv7_state_dict)
from rwkv_cpp.quantize import quantize

from gguf_reader import read_gguf
from ggufgen import write_gguf

V, D, L, N = 300, 64, 3, 16
H = D // N
V7_LORA = {"decay": 16, "a": 8, "v": 8, "gate": 32}


def _sd(version, **kw):
    if version.startswith("5"):
        return make_rwkv5_state_dict(V, D, L, N, version, seed=4, **kw)
    if version == "6.0":
        return make_rwkv6_state_dict(V, D, L, N, seed=4, mix_lora=8, decay_lora=16, **kw)
    return make_rwkv7_state_dict(V, D, L, N, seed=4, lora=V7_LORA, **kw)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """version -> (state dict, FP32 GGUF path)."""
    root = tmp_path_factory.mktemp("wkv_convert")
    out = {}
    for version in ("5.0", "5.1", "5.2", "6.0", "7.0"):
        sd = _sd(version)
        path = root / f"v{version}.gguf"
        convert_state_dict(sd, str(path))
        out[version] = (sd, path)
    return out


EXPECTED_KEYS = {
    "5.0": {"general.architecture": "rwkv5"},
    "5.1": {"general.architecture": "rwkv5"},
    "5.2": {"general.architecture": "rwkv5"},
    "6.0": {"general.architecture": "rwkv6", "rwkv.time_mix_lora_dim": 8, "rwkv.time_decay_lora_dim": 16},
    "7.0": {"general.architecture": "rwkv7", "rwkv.decay_lora_dim": 16, "rwkv.a_lora_dim": 8,
            "rwkv.v_lora_dim": 8, "rwkv.gate_lora_dim": 32},
}


@pytest.mark.parametrize("version", list(EXPECTED_KEYS))
def test_metadata(converted, version):
    g = read_gguf(str(converted[version][1]))
    expected = dict(EXPECTED_KEYS[version], **{
        "rwkv.version": version, "rwkv.format_version": 1, "general.file_type": 0,
        "rwkv.n_vocab": V, "rwkv.n_embed": D, "rwkv.n_layer": L, "rwkv.n_head": H, "rwkv.head_size": N,
        "rwkv.tokenizer": "", "rwkv.emb_ln0_applied": True})
    for key, value in expected.items():
        assert g.kv[key] == value, key
    assert math.isclose(g.kv["rwkv.ln_x_epsilon"], 64e-5, rel_tol=1e-6)
    assert math.isclose(g.kv["rwkv.layer_norm_epsilon"], 1e-5, rel_tol=1e-6)
    assert "rwkv.n_att" not in g.kv
    lora_keys = {k for k in g.kv if k.endswith("_lora_dim")}
    assert lora_keys == {k for k in expected if k.endswith("_lora_dim")}


def test_world_tokenizer_is_inferred(tmp_path):
    path = tmp_path / "w.gguf"
    convert_state_dict(make_rwkv7_state_dict(65536, 32, 1, 16, seed=1, lora=V7_LORA), str(path))
    g = read_gguf(str(path))
    assert g.kv["rwkv.tokenizer"] == "world"
    assert g.kv["rwkv.v_lora_dim"] == 0  # one layer: no value residual anywhere
    with rwkv_cpp.Model(str(path), n_threads=1) as model:
        assert model.tokenizer_name == "world"


@pytest.mark.parametrize("version", ["5.0", "5.1"])
def test_v5_per_head_parameters_are_broadcast(converted, version):
    sd, path = converted[version]
    g = read_gguf(str(path))
    decay = np.asarray(g.tensor("blocks.1.att.time_decay"))
    bonus = np.asarray(g.tensor("blocks.1.att.time_faaaa"))
    assert decay.shape == bonus.shape == (H, N)
    w = np.exp(-np.exp(sd["blocks.1.att.time_decay"].astype(np.float64)))
    np.testing.assert_allclose(decay, np.repeat(w[:, None], N, axis=1), rtol=1e-7)
    if version == "5.0":  # time_first: the bonus is its exp
        u = np.exp(sd["blocks.1.att.time_first"].astype(np.float64))
    else:
        u = sd["blocks.1.att.time_faaaa"]
    np.testing.assert_allclose(bonus, np.repeat(u[:, None], N, axis=1), rtol=1e-7)
    assert ("blocks.1.att.gate.weight" in g.tensors) == (version != "5.0")


def test_v6_transforms(converted):
    sd, path = converted["6.0"]
    g = read_gguf(str(path))
    p = "blocks.2.att."
    np.testing.assert_array_equal(g.tensor(p + "time_maa_w1"), sd[p + "time_maa_w1"].T)
    np.testing.assert_array_equal(g.tensor(p + "time_maa_w2"), sd[p + "time_maa_w2"].transpose(0, 2, 1))
    np.testing.assert_array_equal(g.tensor(p + "time_decay_w1"), sd[p + "time_decay_w1"].T)
    np.testing.assert_array_equal(g.tensor(p + "time_decay"), sd[p + "time_decay"].reshape(D))
    np.testing.assert_array_equal(g.tensor(p + "time_faaaa"), sd[p + "time_faaaa"])


def test_v7_transforms(converted):
    sd, path = converted["7.0"]
    g = read_gguf(str(path))
    for lora in ("w", "a", "v", "g"):
        np.testing.assert_array_equal(g.tensor(f"blocks.1.att.{lora}1"), sd[f"blocks.1.att.{lora}1"].T)
        np.testing.assert_array_equal(g.tensor(f"blocks.1.att.{lora}2"), sd[f"blocks.1.att.{lora}2"].T)
    np.testing.assert_array_equal(g.tensor("blocks.1.att.k_k"), sd["blocks.1.att.k_k"].reshape(D))
    # layer 0's value-residual LoRA is in the checkpoint but unused: not stored
    assert "blocks.0.att.v1" in sd and "blocks.0.att.v1" not in g.tensors


def test_v7_bf16_embedding_is_not_rounded(tmp_path):
    """RWKV-7's official loader widens to float32 before ln0: no bf16
    rounding of ln0(emb), unlike v4/v5/v6 (test_wkv_parity checks the
    logits against the official package)."""
    from rwkv_cpp.convert.random_model import save_safetensors

    sd = make_rwkv7_state_dict(64, 32, 1, 16, seed=2, lora=V7_LORA)
    save_safetensors(str(tmp_path / "m.safetensors"), sd, "BF16")
    from rwkv_cpp.convert import convert_file

    convert_file(str(tmp_path / "m.safetensors"), str(tmp_path / "m.gguf"), "FP32")
    emb = np.asarray(read_gguf(str(tmp_path / "m.gguf")).tensor("emb.weight"))
    low_bits = emb.view(np.uint32) & 0xFFFF
    assert np.count_nonzero(low_bits) > emb.size // 2


@pytest.mark.parametrize("qtype", ["FP16", "Q5_1"])
@pytest.mark.parametrize("version", ["6.0", "7.0"])
def test_quantization_keeps_low_rank_and_vectors(converted, tmp_path, version, qtype):
    """Policy: vectors F32; the LoRA matrices F16 (never quantized: they
    are small and feed exponentials); the square and FFN matrices qtype."""
    out = tmp_path / "q.gguf"
    quantize(converted[version][1], out, qtype, n_threads=1)
    g = read_gguf(str(out))
    low_rank = ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2",
                "w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
    for name, info in g.tensors.items():
        leaf = name.rsplit(".", 1)[-1]
        if len(info.shape) == 1 or leaf in ("r_k", "time_faaaa"):
            assert info.type == GGMLType.F32, name
        elif leaf in low_rank:
            assert info.type == GGMLType.F16, name
        elif name.startswith("blocks."):
            assert info.type.name == {"FP16": "F16"}.get(qtype, qtype), name
    with rwkv_cpp.Model(str(out), n_threads=1) as model:
        assert np.all(np.isfinite(model.eval_sequence([1, 2, 3])[0]))


# ---------------------------------------------------------------------------
# Converter errors
# ---------------------------------------------------------------------------


def test_converter_reports_every_problem(tmp_path):
    sd = _sd("7.0")
    sd["blocks.1.att.w1"] = sd["blocks.1.att.w1"].T.copy()  # transposed
    del sd["blocks.2.att.k_a"]
    sd["blocks.1.ffn.s_emb.weight"] = np.zeros((V, 32), np.float32)  # DeepEmbed: not supported
    with pytest.raises(ConvertError) as info:
        convert_state_dict(sd, str(tmp_path / "o.gguf"))
    msg = str(info.value)
    assert msg.startswith("not a valid RWKV-7.0 checkpoint")
    assert f"tensor 'blocks.1.att.w1': expected shape ({D}, 16), found (16, {D})" in msg
    assert f"missing tensor 'blocks.2.att.k_a' (expected shape ({D}))" in msg
    assert "unexpected tensor 'blocks.1.ffn.s_emb.weight'" in msg


def test_converter_rejects_indivisible_heads(tmp_path):
    sd = _sd("6.0")
    for i in range(L):
        sd[f"blocks.{i}.att.time_faaaa"] = np.zeros((3, 20), np.float32)  # 3 heads of D = 64
    with pytest.raises(ConvertError, match="3 heads do not divide n_embed = 64"):
        convert_state_dict(sd, str(tmp_path / "o.gguf"))


def test_ln_x_eps_option(tmp_path):
    from rwkv_cpp.convert.random_model import save_safetensors

    save_safetensors(str(tmp_path / "m.safetensors"), _sd("5.2"))
    out = tmp_path / "m.gguf"
    done = subprocess.run([sys.executable, "-m", "rwkv_cpp.convert", str(tmp_path / "m.safetensors"), str(out),
                           "--ln-x-eps", "1e-5", "-q"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert math.isclose(read_gguf(str(out)).kv["rwkv.ln_x_epsilon"], 1e-5, rel_tol=1e-6)
    with pytest.raises(ConvertError, match=r"must lie in \(0, 1\)"):
        convert_state_dict(_sd("5.2"), str(tmp_path / "x.gguf"), ln_x_eps=0.0)


# ---------------------------------------------------------------------------
# Loader errors
# ---------------------------------------------------------------------------


def _rewrite(src, dst, drop_key=None, set_keys=None, replace_tensor=None):
    """A copy of an FP32 GGUF with metadata or one tensor changed."""
    g = read_gguf(str(src))
    meta = {k: v for k, v in g.kv.items() if k != drop_key}
    meta.update(set_keys or {})
    tensors = {name: np.asarray(g.tensor(name)) for name in g.tensors}
    if replace_tensor:
        tensors[replace_tensor[0]] = replace_tensor[1]
    return write_gguf(dst, meta, tensors)


def test_loader_needs_every_key(converted, tmp_path):
    path = _rewrite(converted["7.0"][1], tmp_path / "k.gguf", drop_key="rwkv.a_lora_dim")
    with pytest.raises(ModelFormatError, match="rwkv.a_lora_dim"):
        rwkv_cpp.Model(str(path))


def test_loader_checks_heads_against_width(converted, tmp_path):
    path = _rewrite(converted["5.2"][1], tmp_path / "h.gguf", set_keys={"rwkv.head_size": 8})
    with pytest.raises(ModelFormatError, match=r"rwkv.n_head \(4\) \* rwkv.head_size \(8\) must equal"):
        rwkv_cpp.Model(str(path))


def test_loader_names_a_wrongly_shaped_tensor(converted, tmp_path):
    path = _rewrite(converted["7.0"][1], tmp_path / "s.gguf",
                    replace_tensor=("blocks.2.att.r_k", np.zeros((N, H), np.float32)))
    with pytest.raises(ModelFormatError,
                       match=rf"tensor 'blocks.2.att.r_k' has shape \[{H}, {N}\], expected \[{N}, {H}\]"):
        rwkv_cpp.Model(str(path))


def test_loader_rejects_another_versions_tensors(converted, tmp_path):
    """A 5.1 file relabelled 5.0 holds gate tensors that 5.0 does not have."""
    path = _rewrite(converted["5.1"][1], tmp_path / "g.gguf", set_keys={"rwkv.version": "5.0"})
    with pytest.raises(ModelFormatError, match="unexpected tensor '.*gate.*' in an RWKV-5 file"):
        rwkv_cpp.Model(str(path))
