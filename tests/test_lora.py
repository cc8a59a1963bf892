"""``convert BASE OUT --lora ADAPTER [--lora-alpha A]``: the RWKV-LM-LoRA
merge, W + (alpha / r) * B @ A, and the adapter's other tensors replacing
the base's.

Parity: the official package (rwkv 0.8.32) running the merged state dict,
made here in numpy independently of the converter, gives our logits on the
converted base + adapter.  Errors: a rank or shape mismatch, an adapter of
another model, a factor without its partner.
"""

import subprocess
import sys

import numpy as np
import pytest

from conftest import run_official, run_ours, save_pth
from rwkv_cpp.convert import ConvertError, ConvertOptions, convert_file, make_state_dict

from gguf_reader import read_gguf

FP32_TOL = 1e-4  # as tests/test_wkv_parity.py: float32 against the official float32
RANK, ALPHA = 4, 12.0
TOKENS = np.array([1, 7, 42, 199, 3, 150, 0, 77, 12, 5, 180, 64])


def _adapter(base, rng):
    """LoRA pairs on some matrices, and two replaced tensors."""
    adapter = {}
    for name in ("blocks.0.att.key.weight", "blocks.1.att.output.weight", "blocks.1.ffn.value.weight",
                 "head.weight"):
        out_f, in_f = base[name].shape
        stem = name[: -len(".weight")]
        adapter[stem + ".lora_A"] = (rng.standard_normal((RANK, in_f)) * 0.2).astype(np.float32)
        adapter[stem + ".lora_B"] = (rng.standard_normal((out_f, RANK)) * 0.2).astype(np.float32)
    for name in ("blocks.1.ln2.weight", "blocks.0.att.time_decay"):
        adapter[name] = (base[name] + rng.standard_normal(base[name].shape) * 0.1).astype(np.float32)
    return adapter


def _merged_numpy(base, adapter, alpha):
    """The merged state dict, float32 as RWKV-LM-LoRA's merge computes it."""
    merged = {k: v.copy() for k, v in base.items()}
    for name, value in adapter.items():
        if name.endswith(".lora_A"):
            stem = name[: -len(".lora_A")]
            b = adapter[stem + ".lora_B"]
            merged[stem + ".weight"] = base[stem + ".weight"] + np.float32(alpha / value.shape[0]) * (b @ value)
        elif not name.endswith(".lora_B"):
            merged[name] = value
    return merged


@pytest.fixture(scope="module", params=["4", "6.0"])
def lora_case(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    version = request.param
    base = make_state_dict(version, 200, 64, 2, head_size=16, seed=5)
    adapter = _adapter(base, np.random.default_rng(6))
    save_pth(base, "fp32", root / "base.pth")
    save_pth(adapter, "fp32", root / "adapter.pth")
    save_pth(_merged_numpy(base, adapter, ALPHA), "fp32", root / "merged.pth")
    return root, base, adapter


def test_merge_matches_official_on_the_merged_dict(lora_case):
    root, _, _ = lora_case
    out = root / "ours.gguf"
    convert_file(root / "base.pth", out, options=ConvertOptions("FP32", lora=str(root / "adapter.pth"),
                                                                lora_alpha=ALPHA))
    official = run_official(root / "merged.pth", TOKENS)
    ours = run_ours(out, TOKENS)
    err = np.abs(ours.logits - official.logits).max()
    assert err <= FP32_TOL, err
    # the adapter changed the logits far beyond that tolerance
    plain = root / "plain.gguf"
    convert_file(root / "base.pth", plain, "FP32")
    assert np.abs(run_ours(plain, TOKENS).logits - official.logits).max() > 100 * FP32_TOL


def test_merged_tensors(lora_case):
    """Merged matrices equal the float64 merge rounded once; replaced
    tensors are the adapter's; untouched ones are the base's."""
    root, base, adapter = lora_case
    out = root / "check.gguf"
    convert_file(root / "base.pth", out, options=ConvertOptions("FP32", lora=str(root / "adapter.pth"),
                                                                lora_alpha=ALPHA))
    g = read_gguf(out)
    a, b = adapter["blocks.1.att.output.lora_A"], adapter["blocks.1.att.output.lora_B"]
    want = (base["blocks.1.att.output.weight"].astype(np.float64)
            + ALPHA / RANK * (b.astype(np.float64) @ a.astype(np.float64))).astype(np.float32)
    assert np.array_equal(np.asarray(g.tensor("blocks.1.att.output.weight")), want)
    assert np.array_equal(np.asarray(g.tensor("blocks.1.ln2.weight")).ravel(),
                          adapter["blocks.1.ln2.weight"].ravel())
    assert np.array_equal(np.asarray(g.tensor("blocks.0.att.value.weight")), base["blocks.0.att.value.weight"])


def test_cli_merges_with_the_default_alpha(lora_case):
    root, _, _ = lora_case
    res = subprocess.run([sys.executable, "-m", "rwkv_cpp.convert", str(root / "base.pth"), str(root / "cli.gguf"),
                          "--type", "FP32", "--lora", str(root / "adapter.pth")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    explicit = root / "explicit.gguf"
    convert_file(root / "base.pth", explicit, options=ConvertOptions("FP32", lora=str(root / "adapter.pth"),
                                                                     lora_alpha=32.0))
    assert (root / "cli.gguf").read_bytes() == explicit.read_bytes()
    res = subprocess.run([sys.executable, "-m", "rwkv_cpp.convert", str(root / "base.pth"), str(root / "x.gguf"),
                          "--lora-alpha", "8"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--lora-alpha needs --lora" in res.stderr


def _refused(tmp_path, base, adapter, match):
    save_pth(base, "fp32", tmp_path / "b.pth")
    save_pth(adapter, "fp32", tmp_path / "a.pth")
    with pytest.raises(ConvertError, match=match):
        convert_file(tmp_path / "b.pth", tmp_path / "o.gguf", options=ConvertOptions(lora=str(tmp_path / "a.pth")))
    assert not (tmp_path / "o.gguf").exists()


def test_rank_mismatch(tmp_path):
    base = make_state_dict("6.0", 200, 64, 2, head_size=16, seed=5)
    adapter = _adapter(base, np.random.default_rng(1))
    adapter["blocks.0.att.key.lora_B"] = adapter["blocks.0.att.key.lora_B"][:, :2].copy()
    _refused(tmp_path, base, adapter, r"a\.pth: rank mismatch for 'blocks\.0\.att\.key\.weight'")


def test_adapter_of_a_wider_model(tmp_path):
    base = make_state_dict("6.0", 200, 64, 2, head_size=16, seed=5)
    wide = make_state_dict("6.0", 200, 96, 2, head_size=16, seed=5)
    _refused(tmp_path, base, _adapter(wide, np.random.default_rng(1)), "shape mismatch for .*another model")


def test_adapter_of_another_model(tmp_path):
    base = make_state_dict("6.0", 200, 64, 2, head_size=16, seed=5)
    deeper = make_state_dict("6.0", 200, 64, 4, head_size=16, seed=5)
    adapter = {"blocks.3.att.key.lora_A": np.zeros((4, 64), np.float32),
               "blocks.3.att.key.lora_B": np.zeros((64, 4), np.float32)}
    assert "blocks.3.att.key.weight" in deeper
    _refused(tmp_path, base, adapter, r"1 of its targets are not in the base model \(first: "
                                      r"'blocks\.3\.att\.key\.weight'; 0 match\): is it an adapter of another model")


def test_factor_without_its_partner(tmp_path):
    base = make_state_dict("4", 200, 64, 2, seed=5)
    adapter = {"blocks.0.att.key.lora_A": np.zeros((4, 64), np.float32)}
    _refused(tmp_path, base, adapter, r"'blocks\.0\.att\.key\.lora_A' has no 'blocks\.0\.att\.key\.lora_B'")
