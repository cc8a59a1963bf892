"""The bundled demo model: trained in parallel "GPT mode" by
tools/train_demo.py, it must give the same logits in our recurrent "RNN
mode"; the packaged quantized file loads and generates deterministically."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp._defaults import bundled_model_path
from rwkv_cpp.convert import convert_file

ROOT = Path(__file__).resolve().parents[1]
PTH = ROOT / "demo" / "rwkv4-shakespeare-L8-D192.pth"
NPZ = ROOT / "demo" / "gpt_mode_logits.npz"


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    if not PTH.exists():
        pytest.skip("demo checkpoint not in this checkout: %s" % PTH)
    path = tmp_path_factory.mktemp("demo") / "demo-FP32.gguf"
    convert_file(str(PTH), str(path), "FP32")
    with rwkv_cpp.Model(str(path), n_threads=2) as m:
        yield m


def test_gpt_mode_equals_rnn_mode(fp32_model):
    """The trainer's PyTorch logits (parallel over the sequence, fp32 maths
    on the saved bf16 weights) vs ours, one token at a time: max-abs 1e-3."""
    ref = np.load(NPZ)
    tokens = ref["tokens"]
    state, rows = None, []
    for tok in tokens:
        logits, state = fp32_model.eval(int(tok), state)
        rows.append(logits.copy())
    ours = np.stack(rows)
    n = ref["logits_head"].shape[1]
    errors = {
        "first %d logits" % n: np.abs(ours[:, :n] - ref["logits_head"]).max(),
        "top-64": np.abs(np.take_along_axis(ours, ref["top_idx"], 1) - ref["top_val"]).max(),
        "last row": np.abs(ours[-1] - ref["last_logits"]).max(),
        "logsumexp": np.abs(np.log(np.exp(ours.astype(np.float64) - ours.max(1, keepdims=True)).sum(1))
                            + ours.max(1) - ref["logsumexp"]).max(),
    }
    assert max(errors.values()) <= 1e-3, errors
    # and sequence mode gives the same last logits
    seq_logits, seq_state = fp32_model.eval_sequence(tokens)
    assert np.abs(seq_logits - ours[-1]).max() <= 1e-5


def _bundled():
    path = bundled_model_path()
    if path is None:
        pytest.fail("the bundled demo model is missing from the installed package")
    return path


def test_bundled_model_opens():
    _bundled()
    with rwkv_cpp.Model.default(n_threads=1) as m:
        assert (m.version, m.n_vocab, m.n_layer, m.n_embed, m.tokenizer_name) == ("4", 50277, 8, 192, "20B")


def test_bundled_model_is_deterministic():
    _bundled()
    from rwkv_cpp.sampling import SamplingParams
    with rwkv_cpp.Model.default(n_threads=1) as m:
        texts = ["".join(m.generate("ROMEO:\n", max_tokens=24, sampling=SamplingParams(temperature=1.0, top_p=0.8,
                                                                                    seed=7))) for _ in range(2)]
    assert texts[0] == texts[1] and len(texts[0]) > 10


def test_generate_cli_uses_the_bundled_model():
    _bundled()
    res = subprocess.run([sys.executable, "-m", "rwkv_cpp.generate", "HAMLET:", "--max-tokens", "16",
                          "--seed", "1", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip()) > 0
