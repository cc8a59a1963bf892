"""Fuzz the embedding-statistics reader (``rwkv_cpp.embedding.EmbedStats``).

Contract: on any bytes ``EmbedStats.load`` (without a model, and checked
against a model) returns statistics whose vectors have the length their
parts need, or raises ``EmbedStatsError``; ``normalise`` of a vector of
that length then works.

Run: ``python -m tests.fuzz.fuzz_embed_stats --seconds N``.
"""

from __future__ import annotations

import sys
from typing import List

import numpy as np

from rwkv_cpp.embedding import EmbedStats, EmbedStatsError, Parts
from rwkv_cpp.sidecar import model_record

from . import _runner
from ._sidecar_model import N_EMBED, fake_model


def seeds(folder: str) -> List[bytes]:
    _runner.set_workdir(folder)
    model, out = fake_model(), []
    rng = np.random.default_rng(0)
    for spec in ("all", "wkv", "att_xx,ffn_xx@-1", "pp@0:1"):
        parts_dim = Parts.parse(spec).dim(model.n_layer, model.n_embed)
        stats = EmbedStats(model_record(model), spec, rng.standard_normal(parts_dim),
                           rng.uniform(0.0, 2.0, parts_dim), n_passages=3, sources=["seed"])
        path = _runner.scratch_path("seed.embstats")
        stats.save(path)
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def one_input(data: bytes) -> None:
    model, path = fake_model(), _runner.scratch_path("input.embstats")
    with open(path, "wb") as f:
        f.write(data)
    for against in (None, model):
        try:
            stats = EmbedStats.load(path, against)
        except EmbedStatsError:
            continue
        assert stats.mean.shape == stats.std.shape == (stats.mean.size,)
        if against is not None:
            vector = np.ones(stats.mean.size, dtype=np.float32)
            assert stats.normalise(vector, stats.parts).shape == vector.shape
            assert stats.mean.size % N_EMBED == 0


if __name__ == "__main__":
    sys.exit(_runner.main(__spec__.name, seeds, one_input))
