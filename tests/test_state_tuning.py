"""Tuned initial states (state tuning): ``blocks.N.att.time_state``.

Parity with the official package given the same state: for RWKV-5.2 and 6.0
the official loader itself starts from a checkpoint's time_state (as
``time_state.transpose(1, 2)``); for RWKV-7 the official state list is built
from time_state (as it is) and passed to ``forward``.  Ours: the converted
full checkpoint (the tuned state in the model file: ``rwkv_state_init`` and
a NULL state start from it), and a plain model given the state read from a
time_state-only checkpoint (``state_file.initial_state``, the programs'
``--initial-state``).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import rwkv_cpp
from conftest import run_official, run_ours, save_pth
from rwkv_cpp.convert import ConvertError, ConvertOptions, convert_file, make_state_dict
from rwkv_cpp.quantize import quantize
from rwkv_cpp.sampling import SamplingParams
from rwkv_cpp.state_file import StateFileError, initial_state

from gguf_reader import read_gguf
from wkv_zoo import WORKER

FP32_TOL = 1e-4  # as tests/test_wkv_parity.py
N_LAYER, N_EMBED, HEAD = 2, 64, 16
TOKENS = np.array([3, 100, 7, 255, 0, 42, 9, 180])


def _time_state(rng, n_layer=N_LAYER, n_head=N_EMBED // HEAD, head=HEAD):
    return {f"blocks.{i}.att.time_state": (rng.standard_normal((n_head, head, head)) * 0.5).astype(np.float32)
            for i in range(n_layer)}


def _official_v7(root, pth, tokens, time_state=None):
    np.save(root / "tokens.npy", tokens)
    job = {"model": str(pth), "tokens": str(root / "tokens.npy"), "out": str(root / "official.npz")}
    if time_state is not None:
        np.save(root / "ts.npy", np.stack([time_state[f"blocks.{i}.att.time_state"] for i in range(N_LAYER)]))
        job["time_state"] = str(root / "ts.npy")
    (root / "jobs.json").write_text(json.dumps([job]))
    done = subprocess.run([sys.executable, str(WORKER), str(root / "jobs.json")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(root / "official.npz")["logits"]


@pytest.fixture(scope="module", params=["5.2", "6.0", "7.0"])
def tuned(request, tmp_path_factory):
    """(root, version, official logits with the tuned state, official logits without)."""
    root = tmp_path_factory.mktemp("tuned" + request.param)
    version = request.param
    sd = make_state_dict(version, 256, N_EMBED, N_LAYER, head_size=HEAD, seed=21)
    ts = _time_state(np.random.default_rng(22))
    save_pth(sd, "fp32", root / "base.pth")
    save_pth(ts, "fp32", root / "state.pth")
    save_pth({**sd, **ts}, "fp32", root / "full.pth")
    if version == "7.0":
        official = _official_v7(root, root / "base.pth", TOKENS, ts)
        plain = _official_v7(root, root / "base.pth", TOKENS)
    else:  # the official RWKV-5/6 loader reads time_state from the checkpoint
        official = run_official(root / "full.pth", TOKENS).logits
        plain = run_official(root / "base.pth", TOKENS).logits
    convert_file(root / "full.pth", root / "full.gguf", "FP32")
    convert_file(root / "base.pth", root / "base.gguf", "FP32")
    return root, version, official, plain


def test_converted_full_checkpoint_starts_from_the_tuned_state(tuned):
    root, version, official, plain = tuned
    summary = convert_file(root / "full.pth", root / "again.gguf", "FP32")
    assert summary.tuned_state and "tuned initial state" in summary.line()
    with rwkv_cpp.Model(str(root / "full.gguf")) as model:
        assert model.has_tuned_state
        assert np.count_nonzero(model.init_state()) == N_LAYER * N_EMBED * HEAD
    ours = run_ours(root / "full.gguf", TOKENS).logits
    assert np.abs(ours - official).max() <= FP32_TOL
    assert np.abs(plain - official).max() > 100 * FP32_TOL  # the state matters


def test_initial_state_from_a_time_state_checkpoint(tuned):
    root, version, official, _ = tuned
    with rwkv_cpp.Model(str(root / "base.gguf")) as model, rwkv_cpp.Model(str(root / "full.gguf")) as full:
        assert not model.has_tuned_state
        for source in ("state.pth", "full.pth"):  # alone, or inside a full checkpoint
            state = initial_state(root / source, model)
            assert np.array_equal(state, full.init_state())
        logits, state = [], initial_state(root / "state.pth", model)
        for token in TOKENS:
            out, state = model.eval(int(token), state)
            logits.append(out.copy())
        assert np.abs(np.stack(logits) - official).max() <= FP32_TOL
        # a state file saved from this model is read too
        model.save_state(root / "s.state", state)
        assert np.array_equal(initial_state(root / "s.state", model), state)


def test_tuned_state_from_an_adapter(tuned):
    """A state-tuning adapter (time_state only) given to --lora is added to
    the base as its tuned state: the same file as the full checkpoint's."""
    root, _, _, _ = tuned
    convert_file(root / "base.pth", root / "adapted.gguf", options=ConvertOptions("FP32", lora=str(root / "state.pth")))
    assert (root / "adapted.gguf").read_bytes() == (root / "full.gguf").read_bytes()


def test_quantized_file_keeps_the_state_in_f32_and_equals_quantize(tuned):
    root, _, _, _ = tuned
    convert_file(root / "full.pth", root / "q.gguf", "Q5_1")
    quantize(root / "full.gguf", root / "q2.gguf", "Q5_1")
    assert (root / "q.gguf").read_bytes() == (root / "q2.gguf").read_bytes()
    assert read_gguf(root / "q.gguf").tensors["blocks.1.att.time_state"].type == 0


@pytest.mark.timeout(120)
def test_generate_program_with_initial_state(tuned):
    root, _, _, _ = tuned
    args = ["--model", str(root / "base.gguf"), "--tokenizer", "bytes", "--temperature", "0", "--max-tokens", "8"]
    run = lambda extra: subprocess.run([sys.executable, "-m", "rwkv_cpp.generate", "ab"] + args + extra,  # noqa
                                       capture_output=True, timeout=120)
    tuned_run, plain_run = run(["--initial-state", str(root / "state.pth")]), run([])
    assert tuned_run.returncode == 0, tuned_run.stderr
    with rwkv_cpp.Model(str(root / "full.gguf")) as full:
        want = "".join(full.generate("ab", 8, SamplingParams(temperature=0.0), tokenizer="bytes"))
    assert tuned_run.stdout.decode("utf-8", "replace") == "ab" + want + "\n"
    assert tuned_run.stdout != plain_run.stdout
    bad = run(["--initial-state", str(root / "base.gguf")])
    assert bad.returncode == 1 and b"not a state file, nor a checkpoint with a tuned state" in bad.stderr


def test_refusals(tmp_path):
    sd = make_state_dict("6.0", 256, N_EMBED, N_LAYER, head_size=HEAD, seed=21)
    ts = _time_state(np.random.default_rng(1))
    save_pth({**sd, "blocks.0.att.time_state": ts["blocks.0.att.time_state"]}, "fp32", tmp_path / "one.pth")
    with pytest.raises(ConvertError, match=r"missing layers \[1\]"):
        convert_file(tmp_path / "one.pth", tmp_path / "o.gguf")
    wrong = _time_state(np.random.default_rng(1), head=8, n_head=8)
    save_pth({**sd, **wrong}, "fp32", tmp_path / "wrong.pth")
    with pytest.raises(ConvertError, match=r"'blocks\.0\.att\.time_state' has shape \(8, 8, 8\), the model's "
                                           r"state needs \(4, 16, 16\)"):
        convert_file(tmp_path / "wrong.pth", tmp_path / "o.gguf")
    v4 = make_state_dict("4", 256, N_EMBED, N_LAYER, seed=2)
    save_pth({**v4, **ts}, "fp32", tmp_path / "v4.pth")
    with pytest.raises(ConvertError, match="time_state tensors .* not for an RWKV-4 model"):
        convert_file(tmp_path / "v4.pth", tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()
    save_pth(v4, "fp32", tmp_path / "v4-plain.pth")
    convert_file(tmp_path / "v4-plain.pth", tmp_path / "v4.gguf")
    save_pth(ts, "fp32", tmp_path / "ts.pth")
    with rwkv_cpp.Model(str(tmp_path / "v4.gguf")) as model:
        with pytest.raises(StateFileError, match="not for an RWKV-4 model"):
            initial_state(tmp_path / "ts.pth", model)
        with pytest.raises(StateFileError, match="no blocks.N.att.time_state"):
            initial_state(tmp_path / "v4-plain.pth", model)
