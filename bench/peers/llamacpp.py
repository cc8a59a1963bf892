"""llama.cpp, built here from the ``llama-cpp-python`` sdist, as a peer.

Everything lives in a cache folder outside the repository (default
``$XDG_CACHE_HOME/rwkv_cpp/peers`` or ``~/.cache/rwkv_cpp/peers``):

- the sdist (``pip download``), unpacked; its ``vendor/llama.cpp`` is built
  with CMake (``-DGGML_NATIVE=ON``, AMX off, also in the compiler flags:
  ggml's AMX kernels crash on the Intel VMs here), tools only;
- a virtual environment for llama.cpp's converter
  (``convert_hf_to_gguf.py``), which needs torch (the local CPU wheel), numpy,
  safetensors and the vendored ``gguf-py``.  The converter imports
  ``transformers`` only to read ``config.json`` (``AutoConfig``); a
  stand-in module that reads that file (``shim/transformers``) takes its
  place, so transformers is not installed.

Any step that cannot run (no network, no compiler, no torch wheel) raises
:class:`Unavailable` with the reason; callers skip cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: the llama-cpp-python release whose vendored llama.cpp is the peer.
LLAMA_CPP_PYTHON = "0.3.36"
#: the tools the benchmarks and interop checks run.
TOOLS = ("llama-bench", "llama-batched-bench", "llama-quantize", "llama-perplexity", "llama-eval-callback",
         "llama-simple", "llama-completion", "llama-gguf")
#: Compiler flags that keep AMX out of a native build.  ggml's GGML_AMX_*
#: options act only when GGML_NATIVE is off: with -march=native on a CPU
#: that reports AMX, the compiler defines __AMX_INT8__ and ggml builds its
#: AMX matrix kernels in, which die with SIGILL on this workplace's Intel
#: VMs (llama-bench on a Q8_0 or Q4_0 model, 2026-12-03).  An explicit
#: -mno-* wins over what -march implies, wherever it stands.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
#: CMake options: native code, AMX off, tools only, shared libs (libllama.so
#: for llama-cpp-python's LLAMA_CPP_LIB_PATH).
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
                 "-DGGML_AMX_BF16=OFF", "-DCMAKE_C_FLAGS=" + NO_AMX_FLAGS, "-DCMAKE_CXX_FLAGS=" + NO_AMX_FLAGS,
                 "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_SERVER=OFF")
#: the converter's Python packages (torch: the local CPU wheel).
CONVERTER_PACKAGES = ("torch==2.13.0", "numpy", "safetensors", "pyyaml", "tqdm", "requests", "sentencepiece")

SHIM = Path(__file__).resolve().parent / "shim"


class Unavailable(RuntimeError):
    """llama.cpp cannot be built or run here; the message says why."""


def cache_root(override: Optional[str] = None) -> Path:
    """The peers' cache folder (outside the repository)."""
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rwkv_cpp" / "peers"


def _run(cmd: Sequence[str], what: str, log: Path, **kwargs) -> None:
    """Runs cmd with its output in log; Unavailable naming the step on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        try:
            done = subprocess.run(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT, **kwargs)
        except OSError as exc:
            raise Unavailable("%s: %s" % (what, exc)) from None
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise Unavailable("%s failed (exit %d, log %s):\n  %s" % (what, done.returncode, log, "\n  ".join(tail)))


@dataclass(frozen=True)
class LlamaCpp:
    """A built llama.cpp: its source tree, its binaries, the converter's Python."""

    source: Path
    bin: Path
    python: Path
    cache: Path

    def tool(self, name: str) -> Path:
        path = self.bin / name
        if not path.exists():
            raise Unavailable("llama.cpp tool %s was not built (%s)" % (name, path))
        return path

    def version(self) -> str:
        return "llama.cpp of llama-cpp-python %s" % LLAMA_CPP_PYTHON


def fetch_source(cache: Path) -> Path:
    """vendor/llama.cpp of the pinned sdist, downloaded and unpacked once."""
    unpacked = cache / ("llama_cpp_python-%s" % LLAMA_CPP_PYTHON)
    source = unpacked / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    sdist = cache / ("llama_cpp_python-%s.tar.gz" % LLAMA_CPP_PYTHON)
    if not sdist.exists():
        # --no-binary for this package only: its build requirements stay wheels
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
              "llama-cpp-python==%s" % LLAMA_CPP_PYTHON, "-d", cache], "downloading the llama-cpp-python sdist",
             cache / "logs" / "download.log")
    with tarfile.open(sdist) as tar:
        tar.extractall(cache, filter="data")
    if not (source / "CMakeLists.txt").exists():
        raise Unavailable("the sdist has no vendor/llama.cpp: %s" % sdist)
    return source


def build(cache: Path, jobs: int = 2) -> Path:
    """Builds the tools once (a stamp file records the CMake options); the bin folder."""
    source = fetch_source(cache)
    build_dir = source / "build"
    stamp = build_dir / "rwkv_cpp_peers.json"
    want = {"options": list(CMAKE_OPTIONS), "tools": list(TOOLS)}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return build_dir / "bin"
    if shutil.which("cmake") is None or shutil.which(os.environ.get("CXX", "c++")) is None:
        raise Unavailable("building llama.cpp needs cmake and a C++ compiler")
    logs = cache / "logs"
    _run(["cmake", "-S", source, "-B", build_dir, *CMAKE_OPTIONS], "configuring llama.cpp", logs / "cmake.log")
    _run(["cmake", "--build", build_dir, "-j", str(jobs), "--target", *TOOLS], "building llama.cpp",
         logs / "build.log")
    stamp.write_text(json.dumps(want))
    return build_dir / "bin"


def converter_python(cache: Path) -> Path:
    """The Python of a venv able to run convert_hf_to_gguf.py (made once)."""
    venv = cache / "converter-venv"
    python = venv / "bin" / "python"
    stamp = venv / "rwkv_cpp_peers.json"
    if stamp.exists() and json.loads(stamp.read_text()) == list(CONVERTER_PACKAGES):
        return python
    _run([sys.executable, "-m", "venv", venv], "making the converter's venv", cache / "logs" / "venv.log")
    _run([python, "-m", "pip", "install", "-q", *CONVERTER_PACKAGES], "installing the converter's packages",
         cache / "logs" / "venv.log")
    stamp.write_text(json.dumps(list(CONVERTER_PACKAGES)))
    return python


def ensure(cache_dir: Optional[str] = None, jobs: int = 2, allow_build: bool = True) -> LlamaCpp:
    """llama.cpp, built and ready (each step done once); Unavailable if not
    possible, or, with ``allow_build=False``, if it is not built yet."""
    cache = cache_root(cache_dir)
    if not allow_build and not (cache / ("llama_cpp_python-%s" % LLAMA_CPP_PYTHON)).exists():
        raise Unavailable("llama.cpp is not built in %s (run without --no-build to build it)" % cache)
    cache.mkdir(parents=True, exist_ok=True)
    bin_dir = build(cache, jobs)
    return LlamaCpp(fetch_source(cache), bin_dir, converter_python(cache), cache)


# -- the converter and the quantizer ---------------------------------------------------


def convert_hf(llama: LlamaCpp, hf_dir: Path, out: Path, outtype: str = "f16") -> Path:
    """llama.cpp's own conversion of a Hugging Face folder to GGUF (f32/f16/bf16/q8_0)."""
    if out.exists():
        return out
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SHIM), str(llama.source / "gguf-py")]))
    tmp = out.with_name(out.name + ".part")
    _run([llama.python, llama.source / "convert_hf_to_gguf.py", hf_dir, "--outtype", outtype, "--outfile", tmp],
         "llama.cpp's convert_hf_to_gguf.py on %s" % hf_dir, llama.cache / "logs" / ("convert-%s.log" % out.stem),
         env=env)
    tmp.replace(out)
    return out


def quantize(llama: LlamaCpp, src: Path, dst: Path, qtype: str, threads: int = 2) -> Path:
    """llama-quantize to qtype (Q8_0, Q5_1, Q4_0, ...), keeping the head in
    F16 as our files do (``--output-tensor-type f16``)."""
    if dst.exists():
        return dst
    tmp = dst.with_name(dst.name + ".part")
    _run([llama.tool("llama-quantize"), "--output-tensor-type", "f16", src, tmp, qtype, str(threads)],
         "llama-quantize %s" % qtype, llama.cache / "logs" / ("quantize-%s.log" % dst.stem))
    tmp.replace(dst)
    return dst


# -- measurements ------------------------------------------------------------------------


def bench(llama: LlamaCpp, model: Path, threads: int, prefill: Sequence[int], decode_tokens: int,
          reps: int = 1) -> Dict[str, float]:
    """One llama-bench process: {"decode_ms": ms per generated token,
    "prefill_N": tokens/s of an N-token prompt} (its own averages of ``reps``)."""
    cmd = [llama.tool("llama-bench"), "-m", model, "-t", str(threads), "-r", str(reps), "-o", "json",
           "-p", ",".join(map(str, prefill)) if prefill else "0", "-n", str(decode_tokens)]
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable("llama-bench failed on %s: %s" % (model, done.stderr.strip()[-500:]))
    out = {}
    for row in json.loads(done.stdout):
        if row["n_gen"] > 0 and row["n_prompt"] == 0:
            out["decode_ms"] = 1e3 / row["avg_ts"]
        elif row["n_prompt"] > 0 and row["n_gen"] == 0:
            out["prefill_%d" % row["n_prompt"]] = row["avg_ts"]
    return out


def batched_bench(llama: LlamaCpp, model: Path, threads: int, batches: Sequence[int], prompt: int = 128,
                  generate: int = 32) -> List[Dict[str, float]]:
    """llama-batched-bench: per batch size B, B sequences of ``prompt``
    tokens then ``generate`` decode steps; rows with "batch", "decode_tps"
    (aggregate generated tokens/s) and "step_ms" (one decode step)."""
    ctx = max(batches) * (prompt + generate) + 64
    cmd = [llama.tool("llama-batched-bench"), "-m", model, "-t", str(threads), "-tb", str(threads), "-c", str(ctx),
           "-b", "2048", "-ub", "512", "-npp", str(prompt), "-ntg", str(generate),
           "-npl", ",".join(map(str, batches)), "--output-format", "jsonl"]
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable("llama-batched-bench failed on %s: %s" % (model, done.stderr.strip()[-500:]))
    rows = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            rows.append({"batch": r["pl"], "decode_tps": r["speed_tg"], "step_ms": r["t_tg"] * 1e3 / r["tg"]})
    if not rows:
        raise Unavailable("llama-batched-bench printed no jsonl rows: %s" % done.stdout[-300:])
    return rows
