"""A stand-in for a loaded model, for the sidecar-file harnesses: the
attributes the state-file and embedding-statistics readers check (shape
and the fingerprint of the model file) without loading a model."""

from __future__ import annotations

import os
from types import SimpleNamespace

from . import _runner

N_VOCAB, N_EMBED, N_LAYER = 16, 4, 2
#: an RWKV-4 state: five vectors of n_embed per layer (rwkv_cpp.embedding)
STATE_LEN = 5 * N_EMBED * N_LAYER


def fake_model() -> SimpleNamespace:
    """The stand-in; its "model file" is written to the scratch folder."""
    path = _runner.scratch_path("model.gguf")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(b"not a model, only fingerprinted " * 64)
    return SimpleNamespace(n_vocab=N_VOCAB, n_embed=N_EMBED, n_layer=N_LAYER, version="4",
                           state_len=STATE_LEN, path=path)
