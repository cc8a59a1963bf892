"""State files: a recurrent state (and optionally the logits that go with
it) saved to disk, with a record of the model it belongs to.

Layout (little-endian)::

    b"RWKVSTAT"          8-byte magic
    uint32 format        FORMAT_VERSION
    uint32 header_size   bytes of the JSON header that follows
    header               UTF-8 JSON: n_vocab, n_embed, n_layer, version,
                         state_len, fingerprint, has_logits, model (file name)
    float32[state_len]   the state
    float32[n_vocab]     the logits, when has_logits

The fingerprint (``model_fingerprint``) is a hash of the model file's size
and of its first and last ``FINGERPRINT_SPAN`` bytes (the metadata and
tensor table, and the data of the last tensors): cheap, stable across runs,
and different for different weights of the same shape.
"""

import hashlib
import json
import os
import struct

import numpy as np

MAGIC = b"RWKVSTAT"
FORMAT_VERSION = 1
FINGERPRINT_SPAN = 1 << 20
_MAX_HEADER_SIZE = 1 << 16
_SHAPE_KEYS = ("n_vocab", "n_embed", "n_layer", "version", "state_len")


class StateFileError(ValueError):
    """A state file that is malformed or belongs to another model."""


def model_fingerprint(path):
    """Hex digest of the file's size and its first and last bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(struct.pack("<Q", size))
        digest.update(f.read(FINGERPRINT_SPAN))
        f.seek(max(0, size - FINGERPRINT_SPAN))
        digest.update(f.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


def model_record(model):
    """What a state file records about ``model``."""
    record = {key: getattr(model, key) for key in _SHAPE_KEYS}
    record["fingerprint"] = model_fingerprint(model.path)
    record["model"] = os.path.basename(model.path)
    return record


def save(path, model, state, logits=None):
    """Writes ``state`` (and ``logits``) of ``model`` to ``path`` atomically."""
    state = _float32_vector(state, model.state_len, "state")
    header = model_record(model)
    header["has_logits"] = logits is not None
    blobs = [state.tobytes()]
    if logits is not None:
        blobs.append(_float32_vector(logits, model.n_vocab, "logits").tobytes())
    encoded = json.dumps(header, sort_keys=True).encode("utf-8")
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<II", FORMAT_VERSION, len(encoded)) + encoded)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def load(path, model, check_fingerprint=True):
    """``(state, logits or None)`` read from ``path``; ``StateFileError`` if
    the file is malformed or was saved from another model (a model of the
    same shape but other weights is accepted with ``check_fingerprint=False``)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    header, offset = _read_header(data, path)
    _check_model(header, model, path, check_fingerprint)
    n_floats = model.state_len + (model.n_vocab if header["has_logits"] else 0)
    if len(data) != offset + 4 * n_floats:
        raise StateFileError("%s: %d bytes of data, expected %d" % (path, len(data) - offset, 4 * n_floats))
    values = np.frombuffer(data, dtype="<f4", count=n_floats, offset=offset).astype(np.float32)
    state = values[: model.state_len].copy()
    logits = values[model.state_len:].copy() if header["has_logits"] else None
    return state, logits


def _read_header(data, path):
    prefix = len(MAGIC) + 8
    if len(data) < prefix or data[: len(MAGIC)] != MAGIC:
        raise StateFileError("%s is not an rwkv_cpp state file" % path)
    version, size = struct.unpack_from("<II", data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise StateFileError("%s: state file format %d, this version reads %d" % (path, version, FORMAT_VERSION))
    if size > _MAX_HEADER_SIZE or prefix + size > len(data):
        raise StateFileError("%s: truncated or corrupt header (%d bytes)" % (path, size))
    try:
        header = json.loads(data[prefix: prefix + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise StateFileError("%s: corrupt header" % path) from None
    required = _SHAPE_KEYS + ("fingerprint", "has_logits")
    if not isinstance(header, dict) or any(key not in header for key in required):
        raise StateFileError("%s: the header lacks some of %s" % (path, ", ".join(required)))
    return header, prefix + size


def _check_model(header, model, path, check_fingerprint):
    differences = ["%s %r (this model: %r)" % (key, header[key], getattr(model, key))
                   for key in _SHAPE_KEYS if header[key] != getattr(model, key)]
    if differences:
        raise StateFileError("%s was saved from another model (%s): %s" % (
            path, header.get("model", "?"), "; ".join(differences)))
    if check_fingerprint and header["fingerprint"] != model_fingerprint(model.path):
        raise StateFileError(
            "%s was saved from another model file of the same shape (%s, not %s); "
            "pass check_fingerprint=False to load it anyway"
            % (path, header.get("model", "?"), os.path.basename(model.path)))


def _float32_vector(array, length, what):
    array = np.asarray(array)
    if array.dtype != np.float32 or array.size != length:
        raise ValueError("%s must be float32 with %d values, got %s with %d"
                         % (what, length, array.dtype, array.size))
    return np.ascontiguousarray(array.reshape(-1)).astype("<f4", copy=False)
