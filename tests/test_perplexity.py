"""The perplexity, LAMBADA and compare tools against direct computation."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp.compare import compare_logits, compare_models
from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict
from rwkv_cpp.perplexity import lambada, perplexity
from rwkv_cpp.quantize import quantize


class Bytes:
    """Byte-level tokenizer (token id = byte), independent of the package's."""

    def encode(self, text):
        return list(text.encode("utf-8"))


def _direct_nll(model, tokens):
    """Per-token reference: one eval per token, float64 log-softmax."""
    state, nll = None, []
    for i in range(len(tokens) - 1):
        logits, state = model.eval(int(tokens[i]), state)
        x = logits.astype(np.float64)
        lse = x.max() + math.log(np.exp(x - x.max()).sum())
        nll.append(lse - x[tokens[i + 1]])
    return np.array(nll)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("ppl")
    f32 = d / "m32.gguf"
    convert_state_dict(make_rwkv4_state_dict(256, 64, 2, seed=5), str(f32), "FP32", tokenizer="bytes")
    f16 = d / "m16.gguf"
    quantize(f32, f16, "FP16")
    return f32, f16


def test_perplexity_equals_direct_computation(paths):
    tokens = np.random.default_rng(1).integers(0, 256, 300)
    with rwkv_cpp.Model(str(paths[0]), n_threads=2) as m:
        ref = _direct_nll(m, tokens)
        for chunk in (7, 64, 1000):
            res = perplexity(m, tokens, chunk=chunk)
            assert res.n_tokens == 299
            assert abs(res.cross_entropy - ref.mean()) < 1e-5
            assert abs(res.perplexity - math.exp(ref.mean())) < 1e-3 * res.perplexity
        with pytest.raises(ValueError):
            perplexity(m, tokens[:1])


def test_lambada_scoring(tmp_path, paths):
    passages = ["the cat sat on the mat", "to be or not to be", "all the world is a stage"]
    path = tmp_path / "lambada.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in passages) + "\n")
    tok = Bytes()
    with rwkv_cpp.Model(str(paths[0]), n_threads=2) as m:
        res = lambada(m, tok, str(path))
        nll_sum, correct = 0.0, 0
        for text in passages:
            ctx, target = text[:text.rfind(" ")], text[text.rfind(" "):]
            src, dst = [0] + tok.encode(ctx), tok.encode(target)
            seq = src + dst
            state, ok, nll = None, True, 0.0
            for i, t in enumerate(seq[:-1]):
                logits, state = m.eval(t, state)
                if i >= len(src) - 1:
                    x = logits.astype(np.float64)
                    nll += x.max() + math.log(np.exp(x - x.max()).sum()) - x[seq[i + 1]]
                    ok = ok and int(logits.argmax()) == seq[i + 1]
            nll_sum += nll
            correct += ok
    assert res.n_passages == 3
    assert res.accuracy == correct / 3
    assert abs(math.log(res.perplexity) - nll_sum / 3) < 1e-4


def test_compare(paths):
    tokens = np.random.default_rng(2).integers(0, 256, 100)
    same = compare_models(str(paths[0]), str(paths[0]), tokens)
    assert same.kl_mean == 0 and same.max_abs == 0 and same.top1_agreement == 1
    diff = compare_models(str(paths[0]), str(paths[1]), tokens, chunk=33)
    assert 0 < diff.max_abs < 0.05 and diff.kl_mean < 1e-5 and diff.top1_agreement > 0.95
    a = np.random.default_rng(3).standard_normal((4, 10))
    c = compare_logits(a, a + 1.0)  # a constant shift changes no probability
    assert abs(c.kl_mean) < 1e-12 and abs(c.max_abs - 1) < 1e-12


def test_cli(tmp_path, paths):
    text = tmp_path / "t.txt"
    text.write_text("Shall I compare thee to a summer's day? " * 5)
    toks = tmp_path / "t.ids"
    toks.write_text(" ".join(str(b) for b in text.read_bytes()))
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True, text=True, timeout=120)
    r1 = run("rwkv_cpp.perplexity", str(paths[0]), str(toks), "--tokens", "--json", "-q")
    assert r1.returncode == 0, r1.stderr
    r2 = run("rwkv_cpp.perplexity", str(paths[0]), str(toks), "--tokens", "--json", "-q", "--max-tokens", "50")
    assert json.loads(r2.stdout)["n_tokens"] == 49
    assert json.loads(r1.stdout)["n_tokens"] == len(text.read_bytes()) - 1
    r3 = run("rwkv_cpp.compare", str(paths[0]), str(paths[1]), "--random", "64", "--json")
    assert r3.returncode == 0 and json.loads(r3.stdout)["n_tokens"] == 64
    r4 = run("rwkv_cpp.perplexity", str(paths[0]))
    assert r4.returncode == 2 and "give either" in r4.stderr
    r5 = run("rwkv_cpp.perplexity", str(tmp_path / "missing.gguf"), str(toks), "--tokens")
    assert r5.returncode == 1 and "cannot open" in r5.stderr
