"""Random-weight RWKV-5.0/5.1/5.2, 6.0 and 7.0 checkpoints, their GGUF
conversions, and runs of the official implementation and of the float64
reference on them (the counterpart of conftest.ModelZoo for RWKV-4).

Built lazily, once per session: a test that needs one checkpoint builds only
that one.  The official RWKV-7 class is selected by RWKV_V7_ON=1 at import,
so its runs happen in a separate process (official_v7_worker.py), all
RWKV-7 checkpoints in one call.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

import reference_rwkv4 as ref4
import reference_rwkv5plus as ref
from conftest import (
    CheckpointCache, Run, as_source_dtype, official_bf16_ln0_embedding, parity_tokens, run_official)

VERSIONS = ("5.0", "5.1", "5.2", "6.0", "7.0")
WORKER = Path(__file__).resolve().parent / "official_v7_worker.py"


@dataclass(frozen=True)
class WkvSpec:
    name: str
    version: str
    n_vocab: int
    n_embed: int
    n_layer: int
    head_size: int
    bf16: bool = False  # also written as a bf16 checkpoint

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())


def _specs():
    small_head = {"5.0": 8, "5.1": 16, "5.2": 8, "6.0": 16, "7.0": 8}
    for v in VERSIONS:
        # head size 64 (two heads), the real one
        yield WkvSpec(f"v{v}-h64", v, 300, 128, 3, 64)
        # a smaller head size, also as a bf16 checkpoint
        yield WkvSpec(f"v{v}-small", v, 260, 64, 3, small_head[v], bf16=True)
        # the World vocabulary with a tiny width
        yield WkvSpec(f"v{v}-world", v, 65536, 32, 3, 16)


SPECS = {s.name: s for s in _specs()}


def spec_names(kind: str = "", versions=VERSIONS):
    """Names of the specs of some versions whose name ends with kind."""
    return [s.name for s in SPECS.values() if s.version in versions and s.name.endswith(kind)]


def make_state_dict(spec: WkvSpec) -> dict:
    from rwkv_cpp.convert.random_model import (make_rwkv5_state_dict, make_rwkv6_state_dict,
                                               make_rwkv7_state_dict)

    args = (spec.n_vocab, spec.n_embed, spec.n_layer, spec.head_size)
    if spec.version.startswith("5"):
        return make_rwkv5_state_dict(*args, version=spec.version, seed=spec.seed)
    if spec.version == "6.0":
        return make_rwkv6_state_dict(*args, seed=spec.seed, mix_lora=8, decay_lora=16)
    # small LoRA ranks, and layer 0 without v0/v1/v2 in one of the shapes
    return make_rwkv7_state_dict(*args, seed=spec.seed,
                                 lora={"decay": 16, "a": 16, "v": 8, "gate": 32},
                                 layer0_value_lora=not spec.name.endswith("small"))


def reference_embedding_round(spec: WkvSpec, source_dtype: str):
    """The rounding the official loader applies to ln0(emb): bf16 for bf16
    v5/v6 checkpoints; none for RWKV-7 (it widens to float32 first)."""
    if source_dtype == "bf16" and spec.version != "7.0":
        return ref4.round_via_float32_to_bf16
    return None


class WkvZoo(CheckpointCache):
    """RWKV-5/6/7 checkpoints, conversions and runs, once each."""

    def __init__(self, root: Path):
        super().__init__(root)
        self._runs: dict = {}
        self._tokens: dict = {}

    def spec(self, name: str) -> WkvSpec:
        return SPECS[name]

    def _build_state_dict(self, name: str) -> dict:
        return make_state_dict(self.spec(name))

    def shape(self, name: str) -> ref.WkvShape:
        return ref.shape_of(self.state_dict(name), self.spec(name).version)

    def misrounded_rows(self, name: str) -> np.ndarray:
        """Embedding rows where the official bf16 ln0(emb) differs from the
        exact-then-rounded one (v5/v6 bf16 checkpoints; see
        conftest.misrounded_embedding_rows).  Parity tests do not feed them."""
        spec = self.spec(name)
        if not spec.bf16 or spec.version == "7.0":
            return np.array([], dtype=np.int64)
        sd = as_source_dtype(self.state_dict(name), "bf16")
        model = ref.WkvReference(sd, spec.version, ref4.round_via_float32_to_bf16)
        ours = np.stack([model.embed(t) for t in range(spec.n_vocab)])
        # the RWKV-5/6 loader computes ln0(emb) as the RWKV-4 one does
        return np.flatnonzero(np.any(official_bf16_ln0_embedding(sd) != ours, axis=1))

    def tokens(self, name: str) -> np.ndarray:
        if name not in self._tokens:
            s = self.spec(name)
            self._tokens[name] = parity_tokens(s, self.misrounded_rows(name))
        return self._tokens[name]

    def gguf(self, name: str, file_type: str = "FP32", source_dtype: str = "fp32") -> Path:
        return self.converted(name, source_dtype, file_type)

    def quantized(self, name: str, qtype: str) -> Path:
        path = self.root / f"{name}-{qtype}.gguf"
        if not path.exists():
            from rwkv_cpp.quantize import quantize

            quantize(self.gguf(name), path, qtype, n_threads=1)
        return path

    def official(self, name: str, source_dtype: str = "fp32") -> Run:
        key = ("official", name, source_dtype)
        if key not in self._runs:
            if self.spec(name).version == "7.0":
                self._run_official_v7(source_dtype)
            else:
                self._runs[key] = run_official(self.pth(name, source_dtype), self.tokens(name))
        return self._runs[key]

    def _run_official_v7(self, source_dtype: str) -> None:
        """Every RWKV-7 checkpoint of this source dtype, in one worker process."""
        names = [n for n, s in SPECS.items() if s.version == "7.0" and (source_dtype == "fp32" or s.bf16)]
        jobs = []
        for n in names:
            np.save(self.root / f"{n}-tokens.npy", self.tokens(n))
            jobs.append({"model": str(self.pth(n, source_dtype)), "tokens": str(self.root / f"{n}-tokens.npy"),
                         "out": str(self.root / f"{n}-{source_dtype}-official.npz")})
        spec_file = self.root / f"v7-jobs-{source_dtype}.json"
        spec_file.write_text(json.dumps(jobs))
        done = subprocess.run([sys.executable, str(WORKER), str(spec_file)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"official RWKV-7 worker failed:\n{done.stderr[-4000:]}")
        for n, job in zip(names, jobs):
            out = np.load(job["out"])
            self._runs[("official", n, source_dtype)] = Run(out["logits"], out["states"])

    def reference(self, name: str, source_dtype: str = "fp32", ln_x_eps: float = ref.LN_X_EPS) -> Run:
        key = ("reference", name, source_dtype, ln_x_eps)
        if key not in self._runs:
            spec = self.spec(name)
            model = ref.WkvReference(as_source_dtype(self.state_dict(name), source_dtype), spec.version,
                                     reference_embedding_round(spec, source_dtype), ln_x_eps)
            self._runs[key] = Run(*ref.run(model, self.tokens(name)))
        return self._runs[key]


def first_failure(errors: np.ndarray, tol: float) -> Optional[int]:
    bad = np.flatnonzero(errors > tol)
    return int(bad[0]) if bad.size else None
