"""What every benchmark shares: the model cache, the memory bandwidth
measurement, the bytes one token reads, the worker processes, the builds of
the library to compare, and the tables.

The benchmarks are programs, run from the repository root as modules
(``python -m bench.bench_speed``); they use the test helpers of tests/
(the GGUF reader, the float64 references) as their references.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import libggml
import numpy as np

import rwkv_cpp
import rwkv_cpp.convert
from rwkv_cpp._scoring import kl_rows
from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict
from rwkv_cpp.quantize import quantize
from tests.gguf_reader import read_gguf

from .worker import bench_tokens  # noqa: F401 (re-exported: the one token generator)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / "cache"

#: vocabulary of the RWKV-4 Pile models (the 20B tokenizer).
N_VOCAB = 50277
#: random-weight RWKV-4 models: name -> (n_layer, n_embed, n_vocab).
SHAPES = {"169m": (12, 768, N_VOCAB), "430m": (24, 1024, N_VOCAB), "1.5b": (24, 2048, N_VOCAB),
          "smoke": (2, 64, 256)}


# -- the machine -----------------------------------------------------------------


def ggml_build() -> str:
    """Which ggml the library runs on: a native build or the prebuilt wheel."""
    lib = Path(libggml.__file__).parent
    return "native build (libggml/lib)" if (lib / "lib").exists() else "prebuilt AVX2 wheel (libggml/lib64)"


def machine_line(threads: int) -> str:
    """Date, CPU, thread count, ggml build and load average, for a header."""
    load = " ".join("%.2f" % x for x in os.getloadavg())
    return "%s, %s, %d CPUs, %d threads, ggml: %s, load average %s" % (
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), platform.processor() or platform.machine(),
        os.cpu_count(), threads, ggml_build(), load)


def default_kernels() -> List[str]:
    """packed and ggml where the CPU has the packed kernels, else ggml."""
    return ["packed", "ggml"] if rwkv_cpp.packed_kernels_available() else ["ggml"]


# -- the model cache -------------------------------------------------------------


def random_rwkv4_state_dict(vocab: int, n_embed: int, n_layer: int) -> Dict[str, np.ndarray]:
    """A random RWKV-4 state dict built layer by layer (float32 throughout,
    so a 1.5B model needs ~6 GB, not the float64 generator's 16 GB)."""
    sd = make_rwkv4_state_dict(vocab, n_embed, 1, seed=0)
    for i in range(1, n_layer):
        layer = make_rwkv4_state_dict(1, n_embed, 1, seed=i)
        for key, value in layer.items():
            if key.startswith("blocks.0.") and ".ln0." not in key:
                sd["blocks.%d.%s" % (i, key[len("blocks.0."):])] = value
    return sd


def rwkv4_files(name: str, types: Iterable[str]) -> Dict[str, Path]:
    """{type: GGUF path} of the random RWKV-4 model of shape ``name``
    (SHAPES), made once and cached in bench/cache/: FP32 and FP16 converted
    from the state dict, the other types quantized from FP16."""
    CACHE.mkdir(exist_ok=True)
    n_layer, n_embed, vocab = SHAPES[name]
    base = CACHE / ("speed-rwkv4-%s" % name)
    out = {}
    for t in sorted(types, key=lambda t: t not in ("FP32", "FP16")):
        path = Path("%s-%s.gguf" % (base, t))
        if not path.exists() and t in ("FP32", "FP16"):
            print("generating and converting %s (L%d D%d) to %s ..." % (name, n_layer, n_embed, t), flush=True)
            convert_state_dict(random_rwkv4_state_dict(vocab, n_embed, n_layer), str(path), t)
        elif not path.exists():
            f16 = rwkv4_files(name, ["FP16"])["FP16"]
            print("quantizing %s ..." % path.name, flush=True)
            quantize(f16, path, t)
        out[t] = path
    return out


def rwkv4_pth(name: str) -> Path:
    """The same random model as :func:`rwkv4_files`, in the official .pth
    format (fp32 tensors, torch.save), for the official package."""
    import torch  # only benchmarks against the official package need torch

    path = CACHE / ("speed-rwkv4-%s.pth" % name)
    if not path.exists():
        n_layer, n_embed, vocab = SHAPES[name]
        print("writing %s ..." % path.name, flush=True)
        sd = random_rwkv4_state_dict(vocab, n_embed, n_layer)
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, str(path))
    return path


# -- bandwidth and the floor -----------------------------------------------------


@dataclass(frozen=True)
class Bandwidth:
    """One bench/membw.c measurement, GB/s: the best and the median read."""

    best_gbs: float
    median_gbs: float


def measure_bandwidth(threads: int, mib: int = 1024, runs: int = 10) -> Bandwidth:
    """Read bandwidth of this machine now: bench/membw.c (compiled once into
    bench/cache/) reads ``mib`` MiB ``runs`` times with ``threads`` threads."""
    CACHE.mkdir(exist_ok=True)
    binary, source = CACHE / "membw", BENCH / "membw.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run([os.environ.get("CC", "cc"), "-O3", "-march=native", "-pthread", "-o", str(binary),
                        str(source)], check=True)
    out = subprocess.run([str(binary), str(threads), str(mib), str(runs)], check=True, capture_output=True,
                         text=True).stdout
    match = re.search(r"RESULT threads=\d+ bytes=\d+ best_gbs=([\d.]+) median_gbs=([\d.]+)", out)
    if not match:
        raise RuntimeError("unexpected membw output: %r" % out)
    return Bandwidth(float(match.group(1)), float(match.group(2)))


def bytes_per_token(gguf: Path) -> int:
    """Weight bytes one decode step reads: every tensor as stored, except
    the embedding, of which one row."""
    total = 0
    for name, info in read_gguf(str(gguf)).tensors.items():
        total += info.nbytes // info.shape[0] if name == "emb.weight" else info.nbytes
    return total


def floor_ms(nbytes: int, gbs: float) -> float:
    """The bandwidth floor of one token: its bytes read at ``gbs`` GB/s."""
    return nbytes / (gbs * 1e9) * 1e3


# -- worker processes ------------------------------------------------------------


def run_worker(kind: str, model: Path, threads: int, *, decode_tokens: int = 32, runs: int = 1,
               prefill: Sequence[int] = (128, 512), check: int = 0, check_out: Optional[Path] = None,
               repack: bool = True, packed_isa: str = "auto", package: Optional[str] = None,
               strategy: Optional[str] = None,
               n_vocab: Optional[int] = None, no_jit: bool = False,
               batches: Optional[Sequence[int]] = None, packed_cache: Optional[Path] = None) -> dict:
    """One measurement in a fresh process (bench/worker.py documents the
    steps and the options); returns its result."""
    cmd = [sys.executable, "-m", "bench.worker", kind, str(model), "--threads", str(threads),
           "--decode-tokens", str(decode_tokens), "--runs", str(runs), "--prefill", *map(str, prefill)]
    if check:
        cmd += ["--check", str(check), "--check-out", str(check_out)]
    cmd += [] if repack else ["--no-repack"]
    cmd += ["--packed-isa", packed_isa] if packed_isa != "auto" else []
    cmd += ["--package", package] if package else []
    cmd += ["--strategy", strategy] if strategy else []
    cmd += ["--n-vocab", str(n_vocab)] if n_vocab else []
    cmd += ["--no-jit"] if no_jit else []
    cmd += ["--batches", *map(str, batches)] if batches else []
    cmd += ["--packed-cache", str(packed_cache)] if packed_cache else []
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("worker failed: %s\n%s" % (" ".join(cmd), done.stderr))
    return json.loads(done.stdout.split("RESULT ", 1)[1])


# -- builds of the library to compare --------------------------------------------


def library_packages(specs: Sequence[str], folder: Path) -> Dict[str, Optional[str]]:
    """{name: package folder for bench.worker's --package}, from ``--lib``
    values ``NAME=PATH``; no values: {"": None}, the installed package.

    PATH is a library file (librwkv_cpp.so of another build): the folder is
    a copy of the installed Python package (with its converter) beside a
    copy of that file, so that only the library differs.  PATH may also be
    a folder holding a whole installed rwkv_cpp package (a non-editable
    install's site-packages/rwkv_cpp), used as it is.
    """
    if not specs:
        return {"": None}
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or name in out:
            raise SystemExit("--lib %r: expected NAME=PATH with a new NAME" % spec)
        path = Path(path).resolve()
        if path.is_dir() and path.name == "rwkv_cpp" and (path / "__init__.py").exists():
            out[name] = str(path)
        elif path.is_file():
            out[name] = str(_package_copy(path, folder / name / "rwkv_cpp"))
        else:
            raise SystemExit("--lib %s: %s is neither a library file nor an rwkv_cpp package folder" % (name, path))
    return out


def _package_copy(library: Path, dst: Path) -> Path:
    """The installed rwkv_cpp's Python files (and rwkv_cpp.convert's) copied
    to ``dst``, with ``library`` as its native library.

    The library finds ggml through its run path ``$ORIGIN/../libggml/...``
    (the layout of site-packages), so ``dst/../libggml`` links to the ggml
    beside ``library`` if it has one (an installed build), else to this
    environment's.
    """
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.dylib", "*.dll", "models")
    shutil.copytree(Path(rwkv_cpp.__file__).parent, dst, ignore=skip)
    if not (dst / "convert").exists():  # an editable install maps the converter from convert/
        shutil.copytree(Path(rwkv_cpp.convert.__file__).parent, dst / "convert", ignore=skip)
    shutil.copy2(library, dst / library.name)
    ggml = library.parent.parent / "libggml"
    (dst.parent / "libggml").symlink_to(ggml if ggml.is_dir() else Path(libggml.__file__).parent)
    return dst


# -- tables ----------------------------------------------------------------------


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A Markdown table, printed row by row as the rows come."""
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header), flush=True)
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)


def median_range(values: Sequence[float], fmt: str = "%.2f") -> str:
    """'median (min-max)'."""
    return (fmt + " (" + fmt + "-" + fmt + ")") % (statistics.median(values), min(values), max(values))


def kl(ref: np.ndarray, other: np.ndarray) -> float:
    """KL divergence of the softmax of ``other`` from that of ``ref``."""
    return float(kl_rows(np.asarray(ref)[None], np.asarray(other)[None])[0])
