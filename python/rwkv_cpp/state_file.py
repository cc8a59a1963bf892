"""State files: a recurrent state (and optionally the logits that go with
it) saved to disk, with a record of the model it belongs to.

A sidecar file (``rwkv_cpp.sidecar``: magic, format, JSON header, float32
data) with::

    magic                b"RWKVSTAT"
    header               the model record (n_vocab, n_embed, n_layer,
                         version, state_len, fingerprint, model) and
                         has_logits
    float32[state_len]   the state
    float32[n_vocab]     the logits, when has_logits

The functions take a ``Model`` or a ``Context``; ``Model.save_state`` and
``Model.load_state`` call them.

``initial_state`` also reads a tuned initial state from a state-tuned
checkpoint (``blocks.N.att.time_state`` tensors, in a ``.pth`` or
``.safetensors`` of their own or inside a full checkpoint): the state the
``--initial-state`` option of the programs starts from.
"""

import os

import numpy as np

from .convert import ConvertError, open_checkpoint, sniff_format
from .convert.keys import normalize_tensors
from .convert.state_tuning import check_time_state, split_time_state, wkv_matrices
from .sidecar import MODEL_KEYS, SidecarFormat, model_record, same_file, shape_differences


class StateFileError(ValueError):
    """A state file that is malformed or belongs to another model."""


FORMAT = SidecarFormat(magic=b"RWKVSTAT", version=1, kind="state file", error=StateFileError,
                       required=MODEL_KEYS + ("fingerprint", "has_logits"), max_header=1 << 16)


def save(path, model, state, logits=None):
    """Writes ``state`` (and ``logits``) of ``model`` to ``path`` atomically."""
    arrays = [_float32_vector(state, model.state_len, "state")]
    if logits is not None:
        arrays.append(_float32_vector(logits, model.n_vocab, "logits"))
    header = model_record(model)
    header["has_logits"] = logits is not None
    FORMAT.write(path, header, arrays)


def load(path, model, check_fingerprint=True):
    """``(state, logits or None)`` read from ``path``; ``StateFileError`` if
    the file is malformed or was saved from another model (a model of the
    same shape but other weights is accepted with ``check_fingerprint=False``)."""
    header, data = FORMAT.read(path)
    _check_model(header, model, os.fspath(path), check_fingerprint)
    n_floats = model.state_len + (model.n_vocab if header["has_logits"] else 0)
    values = FORMAT.floats(path, data, n_floats)
    state = values[: model.state_len].copy()
    logits = values[model.state_len:].copy() if header["has_logits"] else None
    return state, logits


def initial_state(path, model):
    """The state to start from, read from ``path``: a state file (saved from
    this model) or a checkpoint holding a tuned state (``time_state``; the
    token-shift parts of the state stay zero).  ``StateFileError`` names the
    file when it is neither, or does not fit ``model``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(len(FORMAT.magic))
    if magic == FORMAT.magic:
        return load(path, model)[0]
    try:
        sniff_format(path)
        with open_checkpoint(path) as ckpt:
            _, states = split_time_state(normalize_tensors(ckpt.tensors))
            return _state_from_time_state(path, states, model)
    except ConvertError as exc:
        raise StateFileError("%s: not a state file, nor a checkpoint with a tuned state: %s" % (path, exc)) from None


def _state_from_time_state(path, states, model):
    if not states:
        raise ConvertError("no blocks.N.att.time_state tensor (state tuning) in it")
    if model.version == "4":
        raise ConvertError("time_state tensors (state tuning) are for RWKV-5/6/7, not for an RWKV-4 model")
    n_head, head_size, _ = states[min(states)].shape
    if n_head * head_size != model.n_embed or model.state_len != model.n_layer * (2 + head_size) * model.n_embed:
        raise ConvertError("its time_state is (%d, %d, %d), the model (RWKV-%s, n_embed %d) needs another shape"
                           % (n_head, head_size, head_size, model.version, model.n_embed))
    check_time_state(states, model.version, model.n_layer, n_head, head_size, path)
    state = np.zeros(model.state_len, dtype=np.float32)
    per_layer, D = model.state_len // model.n_layer, model.n_embed
    for i in range(model.n_layer):  # per layer: att x_prev (D), WKV matrices, ffn x_prev (D)
        state[i * per_layer + D: (i + 1) * per_layer - D] = wkv_matrices(model.version, states[i].to_f32()).ravel()
    return state


def _check_model(header, model, path, check_fingerprint):
    differences = shape_differences(header, model)
    if differences:
        raise StateFileError("%s was saved from another model (%s): %s" % (
            path, header.get("model", "?"), "; ".join(differences)))
    if check_fingerprint and not same_file(header, model):
        raise StateFileError(
            "%s was saved from another model file of the same shape (%s, not %s); "
            "pass check_fingerprint=False to load it anyway"
            % (path, header.get("model", "?"), os.path.basename(model.path)))


def _float32_vector(array, length, what):
    array = np.asarray(array)
    if array.dtype != np.float32 or array.size != length:
        raise ValueError("%s must be float32 with %d values, got %s with %d"
                         % (what, length, array.dtype, array.size))
    return np.ascontiguousarray(array.reshape(-1))
