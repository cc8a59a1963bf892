"""What a new user meets first in the programs, beyond their flags' effects
(tests/test_cli_flags.py): ``--version`` everywhere, llama.cpp's short
flags as aliases of ours, the start banner and the speed report, the
bundled model as every program's default, outputs checked before any work
(the input itself, a folder, a missing or unwritable folder, each refused
with the path named), Ctrl-C as exit status 130 with nothing written, and
errors that name the file.

Most checks call a program's ``main`` in-process (fast); a few run it as
``python -m`` to see the real streams.  The models are tiny random ones
and the bundled demo model.
"""

import argparse
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp import chat, compare, embed_stats, generate, perplexity, quantize
from rwkv_cpp._defaults import bundled_model_path
from rwkv_cpp.convert import __main__ as convert_main
from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict, random_model
from rwkv_cpp.convert.errors import OutputPathError
from rwkv_cpp.convert.paths import check_output_folder, check_output_path

PROGRAMS = {"generate": generate.main, "chat": chat.main, "compare": compare.main,
            "perplexity": perplexity.main, "embed_stats": embed_stats.main, "quantize": quantize.main,
            "convert": convert_main.main, "convert.random_model": random_model.main}
#: a folder where nobody, root included, can create a file
UNWRITABLE = "/proc/self"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ux_models")
    convert_state_dict(make_rwkv4_state_dict(256, 32, 2, seed=21), str(root / "m.gguf"), "FP32", tokenizer="bytes")
    return root


def run(module, *args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "rwkv_cpp." + module, *map(str, args)], capture_output=True,
                            timeout=120, cwd=cwd)
    return result.returncode, result.stdout.decode("utf-8"), result.stderr.decode("utf-8")


# ---------------------------------------------------------------------------
# --version, aliases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_every_program_has_version(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        PROGRAMS[name](["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == "python -m rwkv_cpp.%s (rwkv_cpp %s)\n" % (name, rwkv_cpp.__version__)


def test_version_through_python_m():
    rc, out, _ = run("generate", "--version")
    assert rc == 0 and out.strip().endswith("(rwkv_cpp %s)" % rwkv_cpp.__version__)


LLAMA_SAMPLING = ["--temp", "0.5", "--top-p", "0.9", "--top-k", "3", "-s", "7"]
OUR_SAMPLING = ["--temperature", "0.5", "--top-p", "0.9", "--top-k", "3", "--seed", "7"]


@pytest.mark.parametrize("short, long", [
    (["-p", "Hi", "-m", "M", "-n", "5", "-t", "2", "-c", "64"] + LLAMA_SAMPLING,
     ["Hi", "--model", "M", "--max-tokens", "5", "--threads", "2", "--ctx-size", "64"] + OUR_SAMPLING),
    (["Hi", "--n-predict", "5"], ["Hi", "--max-tokens", "5"]),
])
def test_generate_llama_cpp_aliases(short, long):
    a, b = vars(generate.parse_args(short)), vars(generate.parse_args(long))
    a.pop("prompt_option")
    b.pop("prompt_option")
    assert a == b


def test_chat_compare_and_others_llama_cpp_aliases():
    assert vars(chat.parse_args(["-m", "M", "-n", "5", "-t", "2", "-c", "64", "-v"] + LLAMA_SAMPLING)) == vars(
        chat.parse_args(["--model", "M", "--max-tokens", "5", "--threads", "2", "--ctx-size", "64", "--verbose"]
                        + OUR_SAMPLING))
    assert vars(compare.parse_args(["A", "B", "-n", "9", "-t", "2", "-s", "4", "-q"])) == vars(
        compare.parse_args(["A", "B", "--max-tokens", "9", "--threads", "2", "--seed", "4", "--quiet"]))
    for argv in (["-m", "M", "-f", "F", "-t", "2"], ["M", "F", "--threads", "2"], ["-m", "M", "F", "-t", "2"]):
        args = perplexity.parse_args(argv)
        assert (args.model, args.file, args.threads) == ("M", "F", 2), argv
    args = perplexity.parse_args(["F"])  # not a model file: the text, scored by the default model
    assert (args.model, args.file) == (None, "F")
    args = embed_stats.parse_args(["-m", "M", "C", "-o", "S", "-t", "2", "-s", "1"])
    assert (args.model, args.corpus, args.threads, args.seed) == ("M", ["C"], 2, 1)
    args = embed_stats.parse_args(["M", "C1", "C2", "-o", "S"])
    assert (args.model, args.corpus) == ("M", ["C1", "C2"])


def test_generate_aliases_give_the_same_text(models, tmp_path):
    common = ("-m", models / "m.gguf", "--presence-penalty", 0, "--frequency-penalty", 0, "-q")
    rc, short, err = run("generate", "-p", "Hello", "-n", 12, "--temp", 0, "-t", 1, *common, cwd=tmp_path)
    assert rc == 0, err
    rc, long, _ = run("generate", "Hello", "--max-tokens", 12, "--temperature", 0, "--threads", 1, *common,
                      cwd=tmp_path)
    assert short == long and len(short) > len("Hello\n")
    rc, _, err = run("generate", "Hi", "-c", 4096, "-n", 1, *common, cwd=tmp_path)
    assert rc == 0 and "-c/--ctx-size has no effect" in err
    rc, _, err = run("generate", "Hi", "-p", "Ho", cwd=tmp_path)
    assert rc == 2 and "give the prompt once" in err


# ---------------------------------------------------------------------------
# banner and speed report
# ---------------------------------------------------------------------------


def test_generate_banner_and_timings_on_stderr(models, tmp_path):
    rc, out, err = run("generate", "Hello", "-m", models / "m.gguf", "-n", 7, "--temp", 0, "-t", 1,
                       "--presence-penalty", 0, "--frequency-penalty", 0, "--ignore-eos", cwd=tmp_path)
    assert rc == 0, err
    banner, timing = err.splitlines()
    assert banner.startswith("rwkv_cpp generate %s: m.gguf (RWKV-4 FP32, 2 layers x 32), kernels "
                             % rwkv_cpp.__version__)
    assert ", 1 threads, loaded in " in banner and banner.endswith(" MiB")
    assert timing.startswith("prompt: 5 tokens in ") and "| generated: 7 tokens in " in timing
    assert "tokens/s" in timing and "RSS" in timing and "peak" in timing
    assert out.startswith("Hello") and "tokens/s" not in out
    rc, _, err = run("generate", "Hello", "-m", models / "m.gguf", "-n", 3, "-q", cwd=tmp_path)
    assert rc == 0 and err == ""


def test_generation_timings_are_measured(models):
    with rwkv_cpp.Model(models / "m.gguf", n_threads=1) as model:
        g = model.generate("Hello there", max_tokens=6, temperature=0, stop_at_eos=False)
        g.read()
    assert g.prompt_seconds > 0 and g.generate_seconds > 0 and len(g.prompt_tokens) == 11


def test_chat_prompt_summary_on_its_own_line(models, tmp_path):
    """Without a terminal there is no prompt; the summary goes to stderr."""
    rc, out, err = run("chat", "-m", models / "m.gguf", "-n", 3, "-t", 1, "--verbose", cwd=tmp_path)
    assert rc == 0, err
    lines = err.splitlines()
    assert lines[0].startswith("rwkv_cpp chat %s: m.gguf (RWKV-4 FP32" % rwkv_cpp.__version__)
    assert lines[-1].startswith("0 replies, 0 tokens generated") and "peak memory (RSS): " in lines[-1]


# ---------------------------------------------------------------------------
# the bundled model as the default; no development-tree paths
# ---------------------------------------------------------------------------


def test_perplexity_and_embed_stats_default_to_the_bundled_model(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 3, encoding="utf-8")
    rc, out, err = run("perplexity", text, "--json", "-q", "-t", 1, cwd=tmp_path)
    assert rc == 0, err
    rc2, out2, _ = run("perplexity", bundled_model_path(), "-f", text, "--json", "-q", "-t", 1, cwd=tmp_path)
    assert rc2 == 0 and out2 == out
    rc, out, err = run("embed_stats", text, "-o", tmp_path / "s.stats", "--passage-tokens", 4, "-q", cwd=tmp_path)
    assert rc == 0 and "wrote" in out, err
    with rwkv_cpp.Model.default() as model:
        assert model.embed("Hello", stats=str(tmp_path / "s.stats")).shape[0] > 0


def test_perplexity_arguments(models, tmp_path):
    rc, _, err = run("perplexity", models / "m.gguf", cwd=tmp_path)  # a model and no text
    assert rc == 2 and "give either a text FILE or --lambada PATH" in err
    rc, _, err = run("perplexity", "--lambada", cwd=tmp_path)
    assert rc == 2 and "--lambada: expected one argument" in err
    rc, _, err = run("perplexity", "--lambada", tmp_path / "absent.jsonl", cwd=tmp_path)
    assert rc == 1 and "absent.jsonl" in err
    assert "shared" not in perplexity.__doc__ + open(perplexity.__file__, encoding="utf-8").read()


def test_text_files_not_utf8_are_named(models, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    for args in (("perplexity", models / "m.gguf", bad),
                 ("compare", models / "m.gguf", models / "m.gguf", "--text", bad),
                 ("embed_stats", models / "m.gguf", bad, "-o", tmp_path / "s.stats")):
        rc, _, err = run(*args, cwd=tmp_path)
        assert rc == 1 and "%s is not UTF-8 text: byte 0xe9 at offset 3" % bad in err, (args, err)
    rc, _, err = run("chat", "-m", models / "m.gguf", "--intro", "@%s" % bad, cwd=tmp_path)
    assert rc == 1 and str(bad) in err


def test_compare_max_tokens_is_the_count_compared(models, tmp_path):
    pair = ("compare", models / "m.gguf", models / "m.gguf", "-t", 1)
    for flags, n in ((("--max-tokens", 64), 64), (("-n", 10), 10), (("--random", 30), 30), ((), 256),
                     (("--random", 100, "-n", 64), 64)):
        rc, out, err = run(*pair, *flags, cwd=tmp_path)
        assert rc == 0 and out.startswith("tokens: %d " % n), (flags, out, err)


def test_compare_progress_callback(models):
    seen = []
    result = compare.compare_models(models / "m.gguf", models / "m.gguf", np.arange(300) % 256, chunk=128,
                                    progress=seen.append, n_threads=1)
    assert result.n_tokens == 300 and seen == [128 / 300, 256 / 300, 1.0]


# ---------------------------------------------------------------------------
# outputs checked before the work
# ---------------------------------------------------------------------------


def bad_outputs(tmp_path, source):
    """(output path, words the error must contain) for each refused output."""
    (tmp_path / "folder").mkdir(exist_ok=True)
    return [(source, [str(source), "is the input file"]),
            (tmp_path / "folder", [str(tmp_path / "folder"), "is a folder"]),
            (tmp_path / "missing" / "out.bin", [str(tmp_path / "missing" / "out.bin"), "does not exist"]),
            (UNWRITABLE + "/out.bin", [UNWRITABLE + "/out.bin", "cannot write"])]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the unwritable folder is Linux's /proc/self")
def test_check_output_path(tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"x")
    for path, words in bad_outputs(tmp_path, source):
        with pytest.raises(OutputPathError) as exc:
            check_output_path(path, [source])
        assert all(w in str(exc.value) for w in words), (path, str(exc.value))
    check_output_path(tmp_path / "new.bin", [source])  # fine
    (tmp_path / "link.bin").symlink_to(source)
    with pytest.raises(OutputPathError, match="is the input file"):
        check_output_path(tmp_path / "link.bin", [source])
    with pytest.raises(OutputPathError, match="is not a folder"):
        check_output_folder(source)
    assert sorted(os.listdir(tmp_path)) == ["folder", "in.bin", "link.bin"]  # the probe left nothing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the unwritable folder is Linux's /proc/self")
@pytest.mark.parametrize("program", ["quantize", "convert", "embed_stats", "convert.random_model"])
def test_programs_refuse_bad_outputs_up_front(program, models, tmp_path, capsys):
    model = models / "m.gguf"
    source = {"quantize": model, "embed_stats": tmp_path / "corpus.txt", "convert": tmp_path / "in.safetensors",
              "convert.random_model": tmp_path / "in.safetensors"}[program]
    (tmp_path / "corpus.txt").write_text("abcdefgh" * 20, encoding="utf-8")
    random_model.main([str(tmp_path / "in.safetensors"), "-q"])
    before = {source: source.read_bytes()}
    for out, words in bad_outputs(tmp_path, source):
        args = {"quantize": [model, out, "Q8_0"], "convert": [source, out],
                "embed_stats": [model, source, "-o", out, "--passage-tokens", 8],
                "convert.random_model": [out]}[program]
        capsys.readouterr()
        rc = PROGRAMS[program]([str(a) for a in args] + ["-q"])
        err = capsys.readouterr().err
        if program == "convert.random_model" and out == source:
            continue  # it has no input: overwriting an existing file is what it does
        assert rc == 1 and all(w in err for w in words), (out, err)
        assert err.count("\n") == 1 and ".tmp" not in err, err  # one line; no temporary file named
        assert source.read_bytes() == before[source]
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the unwritable folder is Linux's /proc/self")
def test_chat_state_dir_checked_up_front(models, tmp_path):
    (tmp_path / "file").write_text("x")
    for folder, words in ((tmp_path / "none", "does not exist"), (tmp_path / "file", "is not a folder"),
                          (UNWRITABLE, "cannot write in")):
        rc, out, err = run("chat", "-m", models / "m.gguf", "--state-dir", folder, cwd=tmp_path)
        assert rc == 1 and "--state-dir '%s'" % folder in err and words in err and out == "", err


def test_quantize_api_refuses_its_input_as_output(models, tmp_path):
    copy = tmp_path / "m.gguf"
    copy.write_bytes((models / "m.gguf").read_bytes())
    with pytest.raises(rwkv_cpp.ModelIOError, match="is the input file"):
        quantize.quantize(copy, copy, "Q8_0")
    assert copy.read_bytes() == (models / "m.gguf").read_bytes()


# ---------------------------------------------------------------------------
# Ctrl-C: exit status 130, nothing written
# ---------------------------------------------------------------------------


class CtrlCProgress:
    """A progress display whose first update is a Ctrl-C."""

    def __init__(self, *args, **kwargs):
        pass

    def update(self, fraction, extra=""):
        if fraction > 0:
            raise KeyboardInterrupt

    def close(self):
        pass


def test_quantize_ctrl_c_exits_130_and_writes_nothing(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "q.gguf"
    with pytest.raises(KeyboardInterrupt):
        quantize.quantize(models / "m.gguf", out, "Q8_0", progress=CtrlCProgress().update)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(quantize, "Progress", CtrlCProgress)
    assert quantize.main([str(models / "m.gguf"), str(out), "Q8_0"]) == 130
    assert capsys.readouterr().err == "\ninterrupted; no output written\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("program", ["compare", "perplexity", "embed_stats"])
def test_ctrl_c_in_long_programs_exits_130(program, models, tmp_path, monkeypatch, capsys):
    module = {"compare": compare, "perplexity": perplexity, "embed_stats": embed_stats}[program]
    monkeypatch.setattr(module, "Progress", CtrlCProgress)
    (tmp_path / "t.txt").write_text("abcdefgh" * 40, encoding="utf-8")
    model = str(models / "m.gguf")
    args = {"compare": [model, model], "perplexity": [model, str(tmp_path / "t.txt"), "--chunk", "16"],
            "embed_stats": [model, str(tmp_path / "t.txt"), "-o", str(tmp_path / "s.stats"),
                            "--passage-tokens", "8"]}[program]
    assert PROGRAMS[program](args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "s.stats").exists()


def test_random_model_progress_and_atomic_write(tmp_path, capsys):
    assert random_model.main([str(tmp_path / "r.safetensors"), "--rwkv-version", "5.2", "--layer", "1"]) == 0
    err = capsys.readouterr().err
    assert "generating random RWKV-5.2 weights" in err and "wrote %s" % (tmp_path / "r.safetensors") in err
    assert os.listdir(tmp_path) == ["r.safetensors"]


@pytest.mark.parametrize("version", ["4", "5.2", "6.0", "7.0"])
def test_random_weights_report_each_layer(version):
    from rwkv_cpp.convert import make_state_dict
    seen = []
    with_progress = make_state_dict(version, 64, 64, 3, 32, seed=4, progress=seen.append)
    assert seen == [1 / 3, 2 / 3, 1.0]
    plain = make_state_dict(version, 64, 64, 3, 32, seed=4)
    assert list(plain) == list(with_progress)
    assert all(np.array_equal(plain[k], with_progress[k]) and plain[k].dtype == np.float32 for k in plain)


def test_argparse_errors_stay_usage_errors():
    with pytest.raises(SystemExit) as exit_:
        generate.parse_args([])
    assert exit_.value.code == 2
    assert isinstance(generate.parse_args(["x"]), argparse.Namespace)


def test_one_version_everywhere():
    """``rwkv_cpp.__version__``, ``--version`` and the wheel's version in
    pyproject.toml (when it is written there) are one value."""
    from rwkv_cpp.convert.version import __version__
    assert rwkv_cpp.__version__ == __version__
    pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    with open(pyproject, encoding="utf-8") as f:
        project = f.read().split("[project]", 1)[1].split("\n[", 1)[0]  # the [project] table
    written = re.search(r'^version\s*=\s*"([^"]+)"', project, re.M)
    assert written is None or written.group(1) == __version__
