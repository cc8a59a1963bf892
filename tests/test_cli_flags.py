"""Every flag of the command-line programs beyond the defaults, run as
``python -m rwkv_cpp.<name>`` in a subprocess on tiny random models, and
checked for its documented effect against an independent computation
through the Python API (direct ``eval`` loops, numpy maths), not only for a
zero exit status.

The models: ``m.gguf`` (RWKV-4, byte tokenizer, vocabulary 256, 64 wide,
2 layers, FP32), ``none.gguf`` (the same shape, other weights, no
tokenizer recorded) and ``m-q8.gguf`` (``m.gguf`` quantized to Q8_0).

Tolerances: logits and states of one model computed in one call or in
pieces agree to 1e-5 (the sequence tests' bound); cross-entropies and
comparison figures are float64 sums of those, compared to 1e-5 absolute.
Greedy decodes are compared exactly (token ids and text).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import tokenizers
from rwkv_cpp._defaults import bundled_model_path
from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict
from rwkv_cpp.embedding import EmbedStats, from_state
from rwkv_cpp.quantize import quantize
from rwkv_cpp.sampling import PENALTY_EXEMPT_TEXT, SamplingParams

from gguf_reader import read_gguf

BYTES = tokenizers.get("bytes")
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_models")
    convert_state_dict(make_rwkv4_state_dict(256, 64, 2, seed=11), str(root / "m.gguf"), "FP32", tokenizer="bytes")
    convert_state_dict(make_rwkv4_state_dict(256, 64, 2, seed=12), str(root / "none.gguf"), "FP32",
                       tokenizer="none")
    quantize(root / "m.gguf", root / "m-q8.gguf", "Q8_0")
    return root


@pytest.fixture(scope="module")
def model(models):
    with rwkv_cpp.Model(models / "m.gguf", n_threads=1) as m:
        yield m


def run(module, *args, stdin=b"", cwd):
    """Runs ``python -m rwkv_cpp.MODULE ARGS`` in ``cwd``; stdout and stderr as text."""
    result = subprocess.run([sys.executable, "-m", "rwkv_cpp." + module, *map(str, args)], input=stdin,
                            capture_output=True, timeout=TIMEOUT_S, cwd=cwd)
    return result.returncode, result.stdout.decode("utf-8"), result.stderr.decode("utf-8")


def ok(module, *args, stdin=b"", cwd):
    rc, out, err = run(module, *args, stdin=stdin, cwd=cwd)
    assert rc == 0, err
    return out, err


# ---------------------------------------------------------------------------
# independent references
# ---------------------------------------------------------------------------


def greedy_tokens(model, state, logits, n, presence=0.0, frequency=0.0, decay=1.0, tok=BYTES):
    """Up to ``n`` greedy tokens from (state, logits), ending before the
    end-of-text token, with the official penalty rule written out: a
    generated token's logit loses ``presence + count * frequency``; every
    count decays by ``decay`` per token, then the new token's count grows by
    1 (by 0 when its text is a space, tab or digit).  Returns (tokens,
    state, logits) after feeding them all."""
    counts, present, out = np.zeros(model.n_vocab), np.zeros(model.n_vocab, bool), []
    for _ in range(n):
        adjusted = logits.astype(np.float64) - present * (presence + counts * frequency)
        token = int(np.argmax(adjusted))
        if token == tok.eos_id:
            break
        out.append(token)
        counts *= decay
        present[token] = True
        counts[token] += tok.decode([token]) not in PENALTY_EXEMPT_TEXT
        logits, state = model.eval(token, state)
    return out, state, logits


def prefill(model, text, state=None):
    """(state, logits) after ``text`` (byte tokens) from ``state``."""
    logits, state = model.eval_sequence(list(text.encode("utf-8")), state)
    return state, logits


def greedy_text(model, prompt, n, **penalties):
    state, logits = prefill(model, prompt)
    return BYTES.decode(greedy_tokens(model, state, logits, n, **penalties)[0])


# ---------------------------------------------------------------------------
# python -m rwkv_cpp.generate
# ---------------------------------------------------------------------------

NO_PENALTY = ("--presence-penalty", 0, "--frequency-penalty", 0)


def test_generate_temperature_zero_is_argmax(models, model, tmp_path):
    out, _ = ok("generate", "Hello", "--model", models / "m.gguf", "--max-tokens", 16, "--temperature", 0,
                *NO_PENALTY, cwd=tmp_path)
    assert out == "Hello" + greedy_text(model, "Hello", 16) + "\n"


def test_generate_penalty_flags(models, model, tmp_path):
    out, _ = ok("generate", "Hello", "--model", models / "m.gguf", "--max-tokens", 24, "--temperature", 0,
                "--presence-penalty", 1.5, "--frequency-penalty", 0.7, "--penalty-decay", 0.9, cwd=tmp_path)
    chosen = dict(presence=1.5, frequency=0.7, decay=0.9)
    expected = greedy_text(model, "Hello", 24, **chosen)
    for neutral in (dict(presence=0.0), dict(frequency=0.0), dict(decay=1.0)):
        # each of the three flags changes this decode, so each is checked
        assert greedy_text(model, "Hello", 24, **{**chosen, **neutral}) != expected, neutral
    assert out == "Hello" + expected + "\n"


@pytest.mark.parametrize("flags", [("--top-k", 1), ("--top-p", 0)], ids=["top-k-1", "top-p-0"])
def test_generate_truncation_to_one_token_is_greedy(models, model, tmp_path, flags):
    """top-k 1 (or top-p 0) leaves only the best penalised token: greedy at
    any temperature and seed (default penalties 0.2, 0.2, decay 0.996)."""
    out, _ = ok("generate", "Hello", "--model", models / "m.gguf", "--max-tokens", 16, "--temperature", 1.5,
                "--seed", 3, *flags, cwd=tmp_path)
    assert out == "Hello" + greedy_text(model, "Hello", 16, presence=0.2, frequency=0.2, decay=0.996) + "\n"


def test_generate_seed_and_max_tokens(models, model, tmp_path):
    args = ("abc", "--model", models / "m.gguf", "--max-tokens", 20, "--temperature", 1.0, "--top-p", 1.0)
    first, _ = ok("generate", *args, "--seed", 5, cwd=tmp_path)
    again, _ = ok("generate", *args, "--seed", 5, cwd=tmp_path)
    other, _ = ok("generate", *args, "--seed", 6, cwd=tmp_path)
    assert first == again and first != other
    api = model.generate("abc", max_tokens=20, sampling=SamplingParams(temperature=1.0, top_p=1.0, seed=5))
    assert first == "abc" + api.read() + "\n"
    assert len(api.tokens) == 20  # --max-tokens N: N tokens (the byte model has no end-of-text)


def test_generate_threads_and_stdin_prompt(models, model, tmp_path):
    args = ("--model", models / "m.gguf", "--max-tokens", 12, "--temperature", 0, *NO_PENALTY)
    one, _ = ok("generate", "Hi there", *args, "--threads", 1, cwd=tmp_path)
    two, _ = ok("generate", "Hi there", *args, "--threads", 2, cwd=tmp_path)
    piped, _ = ok("generate", "-", *args, stdin="Hi there".encode(), cwd=tmp_path)
    assert one == two == piped == "Hi there" + greedy_text(model, "Hi there", 12) + "\n"


def test_generate_packed_cache(models, tmp_path):
    """--packed-cache FILE: the first run writes the cache, the second maps
    it (not rewritten), and both generate what a run without it does."""
    args = ("abc", "--model", models / "m-q8.gguf", "--max-tokens", 12, "--temperature", 0, *NO_PENALTY)
    plain, _ = ok("generate", *args, cwd=tmp_path)
    cache = tmp_path / "m-q8.packed"
    first, _ = ok("generate", *args, "--packed-cache", cache, cwd=tmp_path)
    assert cache.is_file() == rwkv_cpp.packed_kernels_available()
    before = cache.stat().st_ino if cache.is_file() else None
    second, _ = ok("generate", *args, "--packed-cache", cache, cwd=tmp_path)
    assert plain == first == second
    assert (cache.stat().st_ino if cache.is_file() else None) == before


def test_generate_stop_strings(models, model, tmp_path):
    full = greedy_text(model, "Hello", 30)
    late, early = full[12:14], full[5:7]
    cut = min(full.find(late), full.find(early))
    out, _ = ok("generate", "Hello", "--model", models / "m.gguf", "--max-tokens", 30, "--temperature", 0,
                *NO_PENALTY, "--stop", late, "--stop", early, cwd=tmp_path)
    assert out == "Hello" + full[:cut] + "\n"


def test_generate_tokenizer_override(models, tmp_path):
    args = ("Hi", "--model", models / "none.gguf", "--max-tokens", 8, "--temperature", 0, *NO_PENALTY)
    rc, _, err = run("generate", *args, cwd=tmp_path)
    assert rc == 1 and "records no tokenizer" in err
    out, _ = ok("generate", *args, "--tokenizer", "bytes", cwd=tmp_path)
    with rwkv_cpp.Model(models / "none.gguf", n_threads=1) as other:
        assert out == "Hi" + greedy_text(other, "Hi", 8) + "\n"


# ---------------------------------------------------------------------------
# python -m rwkv_cpp.chat
# ---------------------------------------------------------------------------

CHAT_TOKENS = 12
CHAT_HINT = "+help lists the commands; Ctrl-C stops a reply; Ctrl-D or Ctrl-C at the prompt quits.\n"
TURN_END = "\n\n"


class ChatReference:
    """The chat written out with direct greedy decoding (no penalties): a
    message is the turn ``{user}: MESSAGE\\n\\n{bot}:`` fed after the intro
    and the earlier turns; a reply ends at a blank line (cut there), at the
    end-of-text token (not fed) or after CHAT_TOKENS tokens (in the last two
    cases a blank line is fed, so the next turn starts cleanly)."""

    def __init__(self, model, user, bot, intro):
        self.model, self.user, self.bot = model, user, bot
        self.tok = tokenizers.for_model(model)
        self.intro = self.prefill(intro) if intro else (None, None)
        self.state, self.logits = self.intro

    def prefill(self, text, state=None):
        logits, state = self.model.eval_sequence(self.tok.encode(text), state)
        return state, logits

    def turn(self, message):
        """The reply's output line; the chat moves on past the turn."""
        state, logits = self.prefill("%s: %s%s%s:" % (self.user, message, TURN_END, self.bot), self.state)
        tokens = []
        while len(tokens) < CHAT_TOKENS and int(np.argmax(logits)) != self.tok.eos_id:
            tokens.append(int(np.argmax(logits)))
            logits, state = self.model.eval(tokens[-1], state)
            text = self.tok.decode(tokens)
            if TURN_END in text:
                self.state, self.logits = state, logits
                return "%s:%s\n" % (self.bot, text[:text.index(TURN_END)])
        self.state, self.logits = self.prefill(TURN_END, state)
        return "%s:%s\n" % (self.bot, self.tok.decode(tokens))

    def free(self, text):
        """A free generation from ``\\nTEXT`` (fresh state): (output, state, logits)."""
        state, logits = self.prefill("\n" + text)
        tokens, state, logits = greedy_tokens(self.model, state, logits, CHAT_TOKENS, tok=self.tok)
        return self.tok.decode(tokens) + "\n", state, logits


def chat_script(*lines):
    return ("\n".join(lines) + "\n").encode("utf-8")


@pytest.fixture(scope="module")
def demo():
    if bundled_model_path() is None:
        pytest.skip("the bundled demo model is missing from this installation")
    with rwkv_cpp.Model.default(n_threads=1) as model:
        yield model


def test_chat_commands_and_persona_flags(demo, tmp_path):
    """--user/--bot/--intro @FILE, --state-dir, and +save, +load, +reset,
    +gen, ++, +++, +exit, against the reference conversation (on the demo
    model, whose replies depend on the conversation)."""
    intro, ask = "ROMEO and JULIET speak.\n\n", "What light through yonder window breaks?"
    other, third = "Who art thou?", "Where is thy father?"
    (tmp_path / "intro.txt").write_text(intro, encoding="utf-8")
    states = tmp_path / "states"
    states.mkdir()
    script = chat_script(ask, "+save s1", other, "+load s1", third, "+reset", ask, "+gen Once upon", "++", "+++",
                         "after the story", "+exit", "never read")
    out, err = ok("chat", "--model", demo.path, "--max-tokens", CHAT_TOKENS, "--threads", 1, *NO_PENALTY,
                  "--temperature", 0, "--user", "ROMEO", "--bot", "JULIET", "--intro", "@intro.txt",
                  "--state-dir", states, stdin=script, cwd=tmp_path)
    assert "error" not in err

    ref = ChatReference(demo, "ROMEO", "JULIET", intro)
    saved = os.path.join(str(states), "s1.state")
    assert "rwkv_cpp chat %s: %s (RWKV-4 " % (rwkv_cpp.__version__, os.path.basename(demo.path)) in err
    expected = [CHAT_HINT, ref.turn(ask), "(saved the conversation to %s)\n" % saved]
    after_ask = ref.state, ref.logits
    expected += [ref.turn(other), "(loaded the conversation from %s)\n" % saved]
    without_load = ref.turn(third)
    ref.state, ref.logits = after_ask
    expected += [ref.turn(third), "(the conversation was reset)\n"]
    assert expected[-2] != without_load  # so a +load that did nothing would be seen
    ref.state, ref.logits = ref.intro
    expected.append(ref.turn(ask))
    story, state, logits = ref.free("Once upon")
    expected += [story, story]  # ++ retries it: greedy, so the same text
    expected.append(ref.tok.decode(greedy_tokens(demo, state, logits, CHAT_TOKENS, tok=ref.tok)[0]) + "\n")  # +++
    expected.append(ref.turn("after the story"))  # free generations leave the chat's state alone
    assert out == "".join(expected)
    saved_state, saved_logits = demo.load_state(saved, with_logits=True)
    np.testing.assert_allclose(saved_state, after_ask[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(saved_logits, after_ask[1], rtol=0, atol=1e-4)


def test_chat_inline_settings_and_seed(models, model, tmp_path):
    """-temp=0 and -top_p=0 inside a message make that reply greedy under a
    hot --temperature; --seed makes the sampled replies repeat."""
    args = ("--model", models / "m.gguf", "--max-tokens", CHAT_TOKENS, *NO_PENALTY, "--temperature", 2.0,
            "--top-p", 1.0, "--seed")
    script = chat_script("hello -temp=0", "+reset", "hello -top_p=0", "+reset", "hello")
    out, _ = ok("chat", *args, 9, stdin=script, cwd=tmp_path)
    again, _ = ok("chat", *args, 9, stdin=script, cwd=tmp_path)
    other, _ = ok("chat", *args, 10, stdin=script, cwd=tmp_path)
    greedy = ChatReference(model, "User", "Assistant", "").turn("hello")
    replies = out.split("(the conversation was reset)\n")
    assert replies[0].endswith(greedy) and replies[1] == greedy
    assert replies[2] != greedy  # sampled at temperature 2
    assert out == again and other != out


# ---------------------------------------------------------------------------
# python -m rwkv_cpp.perplexity
# ---------------------------------------------------------------------------

TEXT = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n"


def nll_by_token(model, tokens):
    """-log p(token[i+1] | tokens[:i+1]) by one eval per token, float64 log-softmax."""
    state, out = None, []
    for i in range(len(tokens) - 1):
        logits, state = model.eval(int(tokens[i]), state)
        x = logits.astype(np.float64) - logits.max()
        out.append(np.log(np.exp(x).sum()) - x[tokens[i + 1]])
    return np.array(out)


def scored(out):
    result = json.loads(out)
    return result["n_tokens"], result["cross_entropy"]


def test_perplexity_text_flags(models, model, tmp_path):
    """--chunk and --threads change nothing, --max-tokens N scores N - 1
    predictions, --json/-q change only the form of the output."""
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    ids = list(TEXT.encode("utf-8"))
    ref = nll_by_token(model, ids)
    base = ("perplexity", models / "m.gguf", "t.txt")
    for extra in ((), ("--chunk", 7, "--threads", 1), ("--chunk", 1000, "--threads", 2)):
        out, err = ok(*base, "--json", "-q", *extra, cwd=tmp_path)
        n, ce = scored(out)
        assert n == len(ids) - 1 and abs(ce - ref.mean()) < 1e-5 and err == "", extra
    n, ce = scored(ok(*base, "--json", "-q", "--max-tokens", 40, cwd=tmp_path)[0])
    assert n == 39 and abs(ce - ref[:39].mean()) < 1e-5
    out, err = ok(*base, cwd=tmp_path)
    assert out == "tokens scored: %d  cross-entropy: %.4f nats/token  perplexity: %.3f\n" % (
        len(ids) - 1, ref.mean(), np.exp(ref.mean()))
    assert "scoring" in err  # the progress display, which -q turns off
    for flag in ("--chunk", "--max-tokens"):
        rc, _, err = run(*base, flag, 0, cwd=tmp_path)
        assert rc == 2 and "must be an integer >= 1, got 0" in err, flag


def test_perplexity_pre_tokenized_and_tokenizer(models, model, tmp_path):
    """--tokens reads ids (.npy or text) instead of text; --tokenizer
    supplies a tokenizer to a model that records none."""
    ids = list(TEXT.encode("utf-8"))
    np.save(tmp_path / "ids.npy", np.array(ids, dtype=np.int32))
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ids)))
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    expected = nll_by_token(model, ids).mean()
    for name in ("ids.npy", "ids.txt"):
        n, ce = scored(ok("perplexity", models / "m.gguf", name, "--tokens", "--json", "-q", cwd=tmp_path)[0])
        assert n == len(ids) - 1 and abs(ce - expected) < 1e-5, name
    rc, _, err = run("perplexity", models / "none.gguf", "t.txt", "-q", cwd=tmp_path)
    assert rc == 1 and "records no tokenizer" in err
    out, _ = ok("perplexity", models / "none.gguf", "t.txt", "--tokenizer", "bytes", "--json", "-q", cwd=tmp_path)
    with rwkv_cpp.Model(models / "none.gguf", n_threads=1) as other:
        assert abs(scored(out)[1] - nll_by_token(other, ids).mean()) < 1e-5


def test_perplexity_lambada_file_and_max_passages(models, model, tmp_path):
    """LAMBADA on a tiny file: for each passage, token 0 and the context,
    then the last word (with its space) scored; --max-passages N keeps the
    first N."""
    passages = ["the cat sat on the mat", "to be or not to be", "all the world is a stage"]
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in passages))
    out, _ = ok("perplexity", models / "m.gguf", "--lambada", "l.jsonl", "--max-passages", 2, "--json", "-q",
                cwd=tmp_path)
    nll_sums, correct = [], 0
    for text in passages[:2]:
        cut = text.rfind(" ")
        context, target = [0] + list(text[:cut].encode()), list(text[cut:].encode())
        nll = nll_by_token(model, context + target)[len(context) - 1:]
        nll_sums.append(nll.sum())
        # correct: every target token is the argmax after the tokens before it
        correct += all(int(np.argmax(model.eval_sequence(context + target[:i])[0])) == t
                       for i, t in enumerate(target))
    result = json.loads(out)
    assert result["n_passages"] == 2 and result["accuracy"] == correct / 2
    assert abs(np.log(result["perplexity"]) - np.mean(nll_sums)) < 1e-5


# ---------------------------------------------------------------------------
# python -m rwkv_cpp.compare
# ---------------------------------------------------------------------------


def comparison(models, tokens):
    """The compare figures of m.gguf (A) against m-q8.gguf (B), in numpy."""
    logits = []
    for name in ("m.gguf", "m-q8.gguf"):
        with rwkv_cpp.Model(models / name, n_threads=1) as m:
            logits.append(np.stack([m.eval_sequence(tokens[:i + 1])[0] for i in range(len(tokens))]))
    a, b = (x.astype(np.float64) for x in logits)
    log_pa = a - a.max(-1, keepdims=True) - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True))
    log_pb = b - b.max(-1, keepdims=True) - np.log(np.exp(b - b.max(-1, keepdims=True)).sum(-1, keepdims=True))
    kl = (np.exp(log_pa) * (log_pa - log_pb)).sum(-1)
    return {"n_tokens": len(tokens), "kl_mean": kl.mean(), "kl_max": kl.max(), "max_abs": np.abs(b - a).max(),
            "rel_rms": np.sqrt(((b - a) ** 2).mean() / (a ** 2).mean()),
            "top1_agreement": (a.argmax(-1) == b.argmax(-1)).mean()}


def assert_figures(out, expected):
    result = json.loads(out)
    assert result["n_tokens"] == expected["n_tokens"]
    for key in ("kl_mean", "kl_max", "max_abs", "rel_rms", "top1_agreement"):
        assert abs(result[key] - expected[key]) <= 1e-5 * max(1.0, abs(expected[key])), key


def test_compare_flags(models, tmp_path):
    """--random N with --seed, --text with --max-tokens (and --max-tokens on
    random tokens), --json against the figures computed here."""
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    pair = ("compare", models / "m.gguf", models / "m-q8.gguf")
    seeded = ok(*pair, "--random", 20, "--seed", 1, "--json", cwd=tmp_path)[0]
    assert_figures(seeded, comparison(models, np.random.default_rng(1).integers(0, 256, 20)))
    assert seeded != ok(*pair, "--random", 20, "--seed", 2, "--json", cwd=tmp_path)[0]
    assert_figures(ok(*pair, "--text", "t.txt", "--max-tokens", 30, "--json", cwd=tmp_path)[0],
                   comparison(models, list(TEXT.encode())[:30]))
    line = ok(*pair, "--random", 64, "--max-tokens", 10, cwd=tmp_path)[0]
    assert line.startswith("tokens: 10  KL mean ")
    rc, _, err = run(*pair, "--random", 0, cwd=tmp_path)
    assert rc == 2 and "must be an integer >= 1" in err


def test_compare_tokenizer_override(models, tmp_path):
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    pair = ("compare", models / "none.gguf", models / "none.gguf", "--text", "t.txt", "--json")
    rc, _, err = run(*pair, cwd=tmp_path)
    assert rc == 1 and "records no tokenizer" in err
    result = json.loads(ok(*pair, "--tokenizer", "bytes", cwd=tmp_path)[0])
    assert result["n_tokens"] == len(TEXT.encode()) and result["max_abs"] == 0 and result["top1_agreement"] == 1


# ---------------------------------------------------------------------------
# python -m rwkv_cpp.quantize
# ---------------------------------------------------------------------------


def tensor_types(path):
    """{tensor name: ggml type name} of a GGUF file, read by the tests' own reader."""
    return {name: info.type.name for name, info in read_gguf(str(path)).tensors.items()}


def test_quantize_flags(models, tmp_path):
    """--quantize-head / --quantize-emb quantize those two matrices too
    (default FP16), --threads leaves the bytes unchanged, -q silences it,
    the type name is case-insensitive."""
    source = models / "m.gguf"
    one_d = {name for name, info in read_gguf(str(source)).tensors.items()
             if len(info.ne) == 1 or info.ne[1] == 1}
    cases = {"plain": ((), "F16", "F16"), "head": (("--quantize-head",), "Q5_1", "F16"),
             "emb": (("--quantize-emb",), "F16", "Q5_1"),
             "both": (("--quantize-head", "--quantize-emb", "--threads", 1), "Q5_1", "Q5_1")}
    for case, (flags, head, emb) in cases.items():
        out, err = ok("quantize", source, case + ".gguf", "q5_1", "-q", *flags, cwd=tmp_path)
        assert out == err == ""
        types = tensor_types(tmp_path / (case + ".gguf"))
        assert {"head.weight", "emb.weight"} <= types.keys()
        for name, ggml_type in types.items():
            want = "F32" if name in one_d else {"head.weight": head, "emb.weight": emb}.get(name, "Q5_1")
            assert ggml_type == want, (case, name)
    _, err = ok("quantize", source, "both2.gguf", "Q5_1", "--quantize-head", "--quantize-emb", "--threads", 2,
                cwd=tmp_path)
    assert (tmp_path / "both.gguf").read_bytes() == (tmp_path / "both2.gguf").read_bytes()
    assert "m.gguf (" in err and "both2.gguf (" in err and "Q5_1)" in err  # sizes, printed without -q


# ---------------------------------------------------------------------------
# python -m rwkv_cpp.embed_stats
# ---------------------------------------------------------------------------


def passage_embeddings(model, text, n, parts):
    """The embeddings (``parts``) of the consecutive ``n``-byte passages of ``text``."""
    ids = list(text.encode("utf-8"))
    states = [model.eval_sequence(ids[i:i + n])[1] for i in range(0, len(ids) - n + 1, n)]
    return from_state(np.stack(states), model.n_layer, model.n_embed, parts).astype(np.float64)


def test_embed_stats_flags(models, model, tmp_path):
    """-o, --parts, --passage-tokens, --max-passages 0 (all), two corpus
    files: the mean and std are those of the passages' embeddings."""
    texts = {"a.txt": TEXT * 2, "b.txt": TEXT[::-1] * 3}
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    out, err = ok("embed_stats", models / "m.gguf", "a.txt", "b.txt", "-o", "s.stats", "--parts", "wkv,pp@-1",
                  "--passage-tokens", 16, "--max-passages", 0, "--threads", 1, "-q", cwd=tmp_path)
    x = np.concatenate([passage_embeddings(model, text, 16, "wkv,pp@1") for text in texts.values()])
    stats = EmbedStats.load(tmp_path / "s.stats", model)
    assert (stats.n_passages, stats.passage_tokens, stats.sources) == (len(x), 16, ["a.txt", "b.txt"])
    assert stats.parts.names == ("pp", "wkv") and stats.mean.size == 2 * model.n_embed
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std, x.std(0), rtol=1e-5, atol=1e-6)
    assert out.startswith("wrote s.stats: %d passages of 16 tokens from 2 file(s)" % len(x)) and err == ""


def test_embed_stats_seed_and_tokenizer(models, tmp_path):
    """--max-passages M draws M passages, the same for one --seed;
    --tokenizer supplies a tokenizer to a model that records none."""
    (tmp_path / "a.txt").write_text(TEXT * 3, encoding="utf-8")
    run_args = ("embed_stats", models / "none.gguf", "a.txt", "--parts", "wkv", "--passage-tokens", 8,
                "--max-passages", 3, "--tokenizer", "bytes")
    means = {}
    for name, seed in (("s1", 1), ("s1b", 1), ("s2", 2)):
        _, err = ok(*run_args, "--seed", seed, "-o", name + ".stats", cwd=tmp_path)
        assert "embedding 3 passages" in err  # the progress display, shown without -q
        stats = EmbedStats.load(tmp_path / (name + ".stats"))
        assert stats.n_passages == 3
        means[name] = stats.mean
    np.testing.assert_array_equal(means["s1"], means["s1b"])
    assert not np.array_equal(means["s1"], means["s2"])
    rc, _, err = run(*run_args[:-2], "-o", "x.stats", cwd=tmp_path)
    assert rc == 1 and "records no tokenizer" in err
