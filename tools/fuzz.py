"""Bounded fuzzing: builds the libFuzzer harnesses of tests/fuzz (with clang,
ASan and UBSan, in build/fuzz) and runs each for a given time::

    python tools/fuzz.py --seconds 20                  # every harness, 20 s each
    python tools/fuzz.py --seconds 60 --harness tokenizer
    python tools/fuzz.py --runs 1000000 --harness gguf_load   # a long run

Seed corpora are tiny valid inputs made by the tests' own generators
(tests/ggufgen.py, rwkv_cpp.convert.random_weights), written with the
inputs the fuzzer finds into the work folder (default build/fuzz/work,
outside the tracked files).  The regression files of tests/data/fuzz are
run through the harnesses first.  A crash, a hang (--timeout), a sanitizer
report or an allocation above --malloc-limit-mb fails the command; libFuzzer
writes the input into the work folder's artifacts/ (copy it into
tests/data/fuzz/ with a test once fixed).

Needs clang with libFuzzer (Debian: apt-get install clang).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = ROOT / "tests" / "data" / "fuzz"


@dataclasses.dataclass(frozen=True)
class CHarness:
    """A libFuzzer executable of tests/fuzz (target rwkv_fuzz_<name>)."""
    seeds: Callable[[Path, Path], None]  # writes seed inputs into a folder (models folder given)
    max_len: int                         # largest input libFuzzer makes
    needs_models: bool = False           # gets --model=PATH for each tiny model


@dataclasses.dataclass(frozen=True)
class PyHarness:
    """A Python harness: `python -m MODULE --seconds N --corpus DIR --artifacts
    DIR` (runs from the repository root; exits non-zero on a finding, whose
    input it writes into the artifacts folder)."""
    module: str


# ---------------------------------------------------------------- seed inputs

def tiny_models(folder: Path) -> List[Path]:
    """Tiny valid GGUF models of every version (FP32, plus FP16 and Q8_0
    ones wide enough for the packed kernels); made once per folder."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "done"
    if not done.exists():
        _write_tiny_models(folder)
        done.write_text("")
    return sorted(folder.glob("*.gguf"))


def _write_tiny_models(folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from ggufgen import rwkv4_metadata, rwkv4_tensors, write_gguf
    from rwkv_cpp.convert.convert import convert_state_dict
    from rwkv_cpp.convert.random_weights import make_state_dict
    from rwkv_cpp.quantize import quantize

    write_gguf(folder / "v4_direct.gguf", rwkv4_metadata(16, 8, 1), rwkv4_tensors(16, 8, 1))
    for version, n_layer in (("4", 1), ("5.0", 1), ("5.2", 1), ("6.0", 1), ("7.0", 1), ("7.0", 2)):
        sd = make_state_dict(version, 16, 8, n_layer, head_size=4, n_ffn=16)
        convert_state_dict(sd, str(folder / f"v{version}_L{n_layer}.gguf"))
    # 32 wide: the packed kernels take these matrices.
    wide = folder / "v7.0_wide_fp16.gguf"
    convert_state_dict(make_state_dict("7.0", 16, 32, 1, head_size=8, n_ffn=32), str(wide), "FP16")
    quantize(str(wide), str(folder / "v7.0_wide_q8_0.gguf"), "Q8_0")


def gguf_seeds(out: Path, models: Path) -> None:
    for m in tiny_models(models):
        shutil.copy(m, out / m.name)


def tokenizer_seeds(out: Path, models: Path) -> None:
    """Inputs in the layout of tests/fuzz/fuzz_tokenizer.cpp: a header byte,
    length-prefixed extra entries, then the text."""
    def seed(entries, text, fault=0):
        body = bytes([fault << 6 | len(entries)])
        for e in entries:
            body += bytes([(len(e) - 1) % 16]) + e
        return body + text
    words = [b"he", b"hel", b"hello", b" the", b"th", b"\xe4\xbd\xa0\xe5\xa5\xbd", b"\r\n", b"  "]
    samples = {
        "words": seed(words, b"hello the\r\nhel  he \xe4\xbd\xa0\xe5\xa5\xbd!"),
        "bytes_only": seed([], bytes(range(256))),
        "overlap": seed([b"ab", b"abc", b"bcd", b"abcd"], b"abcabcdabcbcdab"),
        "missing_byte": seed(words, b"x", fault=1),
        "duplicate": seed(words, b"x", fault=2),
        "empty_entry": seed(words, b"x", fault=3),
    }
    for name, data in samples.items():
        (out / name).write_bytes(data)


def eval_seeds(out: Path, models: Path) -> None:
    """Flags byte, model/chunk byte, u16 token ids (tests/fuzz/fuzz_eval.cpp)."""
    def tokens(*ids):
        return b"".join(i.to_bytes(2, "little") for i in ids)
    for model in range(len(tiny_models(models))):
        for chunk in range(5):
            (out / f"m{model}_c{chunk}").write_bytes(bytes([0, model * 5 + chunk]) + tokens(1, 2, 3, 15, 0))
    (out / "all_logits").write_bytes(bytes([8, 0]) + tokens(1, 2, 3))
    (out / "aliased").write_bytes(bytes([3, 1]) + tokens(4, 5))
    (out / "bad_token").write_bytes(bytes([0, 2]) + tokens(1, 16))
    (out / "short_state").write_bytes(bytes([0x10, 3]) + tokens(1))


# ------------------------------------------------------------- the harnesses

# Every harness that `--harness` names.  C harnesses are libFuzzer targets of
# tests/fuzz/*.cpp; the Python readers' harnesses are the modules
# tests/fuzz/fuzz_*.py (atheris when installed, else their own mutation loop).
HARNESSES: Dict[str, object] = {
    "gguf_load": CHarness(gguf_seeds, max_len=1 << 16),
    "tokenizer": CHarness(tokenizer_seeds, max_len=4096),
    "eval": CHarness(eval_seeds, max_len=64, needs_models=True),
    "pth": PyHarness("tests.fuzz.fuzz_pth"),
    "safetensors": PyHarness("tests.fuzz.fuzz_safetensors"),
    "legacy_bin": PyHarness("tests.fuzz.fuzz_legacy_bin"),
    "llama_gguf": PyHarness("tests.fuzz.fuzz_llama_gguf"),
    "state_file": PyHarness("tests.fuzz.fuzz_state_file"),
    "embed_stats": PyHarness("tests.fuzz.fuzz_embed_stats"),
    "tokenizers": PyHarness("tests.fuzz.fuzz_tokenizers"),
}


# ----------------------------------------------------------------- running

def build(build_dir: Path) -> None:
    for tool in ("clang", "clang++"):
        if shutil.which(tool) is None:
            sys.exit(f"fuzz: {tool} not found; the harnesses need clang with libFuzzer "
                     "(Debian: apt-get install clang)")
    if not (build_dir / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DRWKV_FUZZ=ON",
                        "-DCMAKE_C_COMPILER=clang", "-DCMAKE_CXX_COMPILER=clang++",
                        "-DCMAKE_BUILD_TYPE=RelWithDebInfo", f"-DPython_EXECUTABLE={sys.executable}"],
                       check=True, stdout=subprocess.DEVNULL)
    targets = [f"rwkv_fuzz_{n}" for n, h in HARNESSES.items() if isinstance(h, CHarness)]
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 1),
                    "--target", *targets], check=True, stdout=subprocess.DEVNULL)


@dataclasses.dataclass
class Result:
    name: str
    ok: bool
    executions: int = 0
    seconds: float = 0.0
    corpus: int = 0
    note: str = ""


def run_c(name: str, h: CHarness, args, work: Path) -> Result:
    exe = args.build_dir / "tests" / "fuzz" / f"rwkv_fuzz_{name}"
    seeds, corpus, artifacts = work / "seeds" / name, work / "corpus" / name, work / "artifacts"
    for d in (seeds, corpus, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    h.seeds(seeds, work / "models")
    extra = [f"--model={m}" for m in tiny_models(work / "models")] if h.needs_models else []
    common = [f"-max_len={h.max_len}", f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit_mb}",
              f"-malloc_limit_mb={args.malloc_limit_mb}", f"-artifact_prefix={artifacts}/{name}-"]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    regressions = sorted(REGRESSIONS.glob(f"{name}-*"))
    if regressions:  # the files of fixed findings, each run once
        r = subprocess.run([str(exe), *common, *extra, *map(str, regressions)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            print(r.stdout[-4000:])
            return Result(name, False, note="a regression file of tests/data/fuzz fails")
    limit = [f"-runs={args.runs}"] if args.runs else [f"-max_total_time={args.seconds}"]
    t0 = time.monotonic()
    r = subprocess.run([str(exe), *common, *limit, "-print_final_stats=1", *extra, str(corpus), str(seeds)],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.monotonic() - t0
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", r.stdout)
    res = Result(name, r.returncode == 0, int(m.group(1)) if m else 0, seconds,
                 len(list(corpus.iterdir())))
    if r.returncode != 0:
        print(r.stdout[-8000:])
        res.note = f"libFuzzer exited with {r.returncode}; input in {artifacts}"
    return res


def run_py(name: str, h: PyHarness, args, work: Path) -> Result:
    t0 = time.monotonic()
    folder = work / name
    (folder / "corpus").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", h.module, "--seconds", str(args.seconds), "--corpus", str(folder / "corpus"),
           "--artifacts", str(folder)]
    r = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(r.stderr)
    # the harness's last line: "#<executions> DONE <engine> engine: ..."
    done = re.findall(r"^#(\d+) DONE", r.stderr, flags=re.M)
    corpus = len(list((folder / "corpus").iterdir()))
    return Result(name, r.returncode == 0, executions=int(done[-1]) if done else 0,
                  seconds=time.monotonic() - t0, corpus=corpus,
                  note="" if r.returncode == 0 else f"exited with {r.returncode}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=20, help="time per harness (default 20)")
    ap.add_argument("--runs", type=int, default=0, help="C harnesses: stop after this many executions instead")
    ap.add_argument("--harness", action="append", choices=sorted(HARNESSES), help="default: all")
    ap.add_argument("--build-dir", type=Path, default=ROOT / "build" / "fuzz")
    ap.add_argument("--work", type=Path, default=None, help="seeds, corpora, artifacts (default BUILD_DIR/work)")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take (a hang)")
    ap.add_argument("--rss-limit-mb", type=int, default=2048)
    ap.add_argument("--malloc-limit-mb", type=int, default=256, help="largest single allocation")
    args = ap.parse_args(argv)
    names = args.harness or list(HARNESSES)
    work = args.work or args.build_dir / "work"
    if any(isinstance(HARNESSES[n], CHarness) for n in names):
        build(args.build_dir)
    results = []
    for name in names:
        h = HARNESSES[name]
        results.append(run_c(name, h, args, work) if isinstance(h, CHarness) else run_py(name, h, args, work))
        r = results[-1]
        rate = r.executions / r.seconds if r.seconds else 0.0
        print(f"fuzz {name}: {'ok' if r.ok else 'FAILED'}, {r.executions} executions in {r.seconds:.0f} s "
              f"({rate:.0f}/s), corpus {r.corpus} {r.note}", flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
