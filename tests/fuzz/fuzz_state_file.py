"""Fuzz the state-file reader (``rwkv_cpp.state_file.load``).

Contract: on any bytes ``load`` returns a state (and logits) of the
model's sizes or raises ``StateFileError``.  The model is a stand-in with
the attributes the reader checks (``_sidecar_model``).

Run: ``python -m tests.fuzz.fuzz_state_file --seconds N``.
"""

from __future__ import annotations

import sys
from typing import List

import numpy as np

from rwkv_cpp import state_file
from rwkv_cpp.state_file import StateFileError

from . import _runner
from ._sidecar_model import STATE_LEN, fake_model


def seeds(folder: str) -> List[bytes]:
    _runner.set_workdir(folder)
    model, out = fake_model(), []
    rng = np.random.default_rng(0)
    for logits in (None, rng.standard_normal(model.n_vocab).astype(np.float32)):
        path = _runner.scratch_path("seed.state")
        state_file.save(path, model, rng.standard_normal(STATE_LEN).astype(np.float32), logits)
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def one_input(data: bytes) -> None:
    model, path = fake_model(), _runner.scratch_path("input.state")
    with open(path, "wb") as f:
        f.write(data)
    for check in (True, False):
        try:
            state, logits = state_file.load(path, model, check_fingerprint=check)
        except StateFileError:
            continue
        assert state.dtype == np.float32 and state.shape == (STATE_LEN,)
        assert logits is None or (logits.dtype == np.float32 and logits.shape == (model.n_vocab,))


if __name__ == "__main__":
    sys.exit(_runner.main(__spec__.name, seeds, one_input))
