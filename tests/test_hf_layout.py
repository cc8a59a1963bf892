"""Hugging Face RWKV-5.2/6/7 folders (convert/hf_layout.py): an official
checkpoint written as an HF folder reads back as the same tensors, and the
converter's file made from the folder gives the logits of its file made
from the official checkpoint (FP32: at most 1e-5 apart; the layouts differ
by renaming, transposing and reshaping only, so the files are equal)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp.convert import ConvertError, convert_file, convert_state_dict
from rwkv_cpp.convert.hf_layout import (HF_ARCHITECTURES, WORLD_VOCAB_NAME, hf_to_official, hf_version,
                                        open_hf_folder, write_hf_folder)
from rwkv_cpp.convert.random_weights import (make_rwkv5_state_dict, make_rwkv6_state_dict,
                                             make_rwkv7_state_dict)
from rwkv_cpp.convert.safetensors import open_safetensors, write_safetensors

WORLD_VOCAB = str(Path(rwkv_cpp.__file__).parent / "data" / WORLD_VOCAB_NAME)
TOKENS = [1, 5, 300, 7, 9, 100, 42, 0]
#: FP32 logits of the two conversions (equal files: 0 in practice)
PARITY_TOL = 1e-5


def _state_dict(version):
    if version == "5.2":
        return make_rwkv5_state_dict(512, 64, 2, head_size=32, seed=3)
    if version == "6.0":
        return make_rwkv6_state_dict(512, 64, 2, head_size=32, seed=1)
    return make_rwkv7_state_dict(512, 64, 3, head_size=32, seed=2,
                                 lora={"decay": 32, "a": 32, "v": 32, "gate": 32})


VERSIONS = ["5.2", "6.0", "7.0"]


@pytest.fixture(scope="module", params=VERSIONS)
def hf_model(request, tmp_path_factory):
    """(version, official state dict, HF folder)."""
    version = request.param
    sd = _state_dict(version)
    folder = tmp_path_factory.mktemp("hf" + version.replace(".", ""))
    assert write_hf_folder(sd, str(folder), WORLD_VOCAB) == version
    return version, sd, folder


def test_folder_content(hf_model):
    version, sd, folder = hf_model
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [HF_ARCHITECTURES[version]]
    assert config["vocab_size"] == 512 and config["num_hidden_layers"] == (3 if version == "7.0" else 2)
    # llama.cpp's converter adds <s> as token 0: the file holds n_vocab - 1 tokens
    assert len((folder / WORLD_VOCAB_NAME).read_text(encoding="utf-8").splitlines()) == 511
    with open_safetensors(str(folder / "model.safetensors")) as ckpt:
        assert hf_version(ckpt.tensors) == version


def test_round_trip_gives_the_official_tensors(hf_model):
    version, sd, folder = hf_model
    with open_hf_folder(str(folder)) as ckpt:
        official = hf_to_official(ckpt.tensors)
        # fla's RWKV-7 has no value LoRA in layer 0: those tensors are dropped
        dropped = {f"blocks.0.att.v{j}" for j in range(3)} if version == "7.0" else set()
        assert set(official) == set(sd) - dropped
        for name, tensor in official.items():
            data = tensor.to_f32()
            assert data.size == sd[name].size, name
            np.testing.assert_array_equal(data.reshape(sd[name].shape), sd[name], err_msg=name)


def test_hf_layouts_transform(hf_model):
    """The layout differences the tables encode, checked on the file."""
    version, sd, folder = hf_model
    with open_safetensors(str(folder / "model.safetensors")) as ckpt:
        t = ckpt.tensors
        if version == "7.0":
            np.testing.assert_array_equal(t["model.layers.1.attn.w_lora.lora.0.weight"].to_f32(),
                                          sd["blocks.1.att.w1"].T)
            np.testing.assert_array_equal(t["model.layers.1.attn.w_lora.lora.2.bias"].to_f32(),
                                          sd["blocks.1.att.w0"].reshape(-1))
            assert "model.layers.0.attn.v_lora.lora.0.weight" not in t
            assert t["model.layers.0.attn.k_k"].shape == (64,)
        else:
            key = "rwkv.blocks.1.attention.time_decay"
            np.testing.assert_array_equal(t[key].to_f32(), sd["blocks.1.att.time_decay"])


def _logits(path):
    model = rwkv_cpp.Model(str(path))
    try:
        logits, _ = model.eval_sequence(TOKENS)
        return np.array(logits)
    finally:
        model.close()


def test_logits_equal_the_official_conversion(hf_model, tmp_path):
    version, sd, folder = hf_model
    summary = convert_file(str(folder), str(tmp_path / "hf.gguf"), "FP32")
    assert summary.version == version and summary.source_format == "hf_folder"
    convert_state_dict(sd, str(tmp_path / "official.gguf"), "FP32")
    diff = np.abs(_logits(tmp_path / "hf.gguf") - _logits(tmp_path / "official.gguf")).max()
    assert diff <= PARITY_TOL


def test_bf16_sharded_folder(tmp_path):
    """Shards named by model.safetensors.index.json, stored BF16."""
    sd = _state_dict("6.0")
    write_hf_folder(sd, str(tmp_path / "one"), WORLD_VOCAB, dtype="BF16")
    with open_safetensors(str(tmp_path / "one" / "model.safetensors")) as ckpt:
        arrays = {n: t.to_f32() for n, t in ckpt.tensors.items()}
    folder = tmp_path / "sharded"
    folder.mkdir()
    names = list(arrays)
    shards = {"model-00001-of-00002.safetensors": names[:20], "model-00002-of-00002.safetensors": names[20:]}
    for shard, part in shards.items():
        write_safetensors(str(folder / shard), {n: arrays[n] for n in part}, dtype="BF16")
    index = {"metadata": {}, "weight_map": {n: s for s, part in shards.items() for n in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_file(str(tmp_path / "one"), str(tmp_path / "one.gguf"))
    convert_file(str(folder), str(tmp_path / "sharded.gguf"))
    assert np.array_equal(_logits(tmp_path / "one.gguf"), _logits(tmp_path / "sharded.gguf"))


def test_command_line_reads_a_folder(hf_model, tmp_path):
    version, _, folder = hf_model
    out = tmp_path / "cli.gguf"
    proc = subprocess.run([sys.executable, "-m", "rwkv_cpp.convert", str(folder), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"RWKV-{version}" in proc.stderr and out.is_file()


def test_errors(tmp_path):
    with pytest.raises(ConvertError, match="no Hugging Face port"):
        write_hf_folder(make_rwkv5_state_dict(256, 64, 1, head_size=32, version="5.1"),
                        str(tmp_path / "v51"), WORLD_VOCAB)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConvertError, match="without .safetensors files"):
        convert_file(str(empty), str(tmp_path / "x.gguf"))
    assert not (tmp_path / "x.gguf").exists()
    bad = tmp_path / "bad_index"
    bad.mkdir()
    (bad / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../evil.safetensors"}}')
    with pytest.raises(ConvertError, match="not a file of the folder"):
        convert_file(str(bad), str(tmp_path / "y.gguf"))
    assert not os.path.exists(tmp_path / "y.gguf")
