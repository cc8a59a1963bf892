"""Sidecar files: float32 data that belongs to one model file, with a record
of that model.  State files (``rwkv_cpp.state_file``) and embedding
statistics (``rwkv_cpp.embedding.EmbedStats``) are both of this kind.

Layout (little-endian)::

    magic                8 bytes, one per kind of file
    uint32 format        the kind's format version
    uint32 header_size   bytes of the JSON header that follows
    header               UTF-8 JSON: the model record (``model_record``)
                         and the kind's own keys
    float32[...]         the data

The model record holds the model's shape (``MODEL_KEYS``), its file name and
its fingerprint (``model_fingerprint``): a hash of the model file's size and
of its first and last ``FINGERPRINT_SPAN`` bytes (the metadata and tensor
table, and the data of the last tensors): cheap, stable across runs, and
different for different weights of the same shape.
"""

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass

import numpy as np

FINGERPRINT_SPAN = 1 << 20
#: the model attributes a sidecar file records and checks
MODEL_KEYS = ("n_vocab", "n_embed", "n_layer", "version", "state_len")


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
    """What a sidecar file records about ``model`` (a Model or a Context)."""
    record = {key: getattr(model, key) for key in MODEL_KEYS}
    record["fingerprint"] = model_fingerprint(model.path)
    record["model"] = os.path.basename(model.path)
    return record


def shape_differences(record, model):
    """How the model of ``record`` differs in shape from ``model``: one
    ``"key recorded (this model: actual)"`` per differing key."""
    return ["%s %r (this model: %r)" % (key, record[key], getattr(model, key))
            for key in MODEL_KEYS if record[key] != getattr(model, key)]


def same_file(record, model):
    """Whether ``record`` has the fingerprint of ``model``'s file."""
    return record["fingerprint"] == model_fingerprint(model.path)


@dataclass(frozen=True)
class SidecarFormat:
    """One kind of sidecar file: its magic, format version, the name used
    in messages (``kind``), the exception it raises (a ValueError subclass),
    the header keys it needs and the largest header it accepts."""

    magic: bytes
    version: int
    kind: str
    error: type
    required: tuple
    max_header: int

    def write(self, path, header, arrays):
        """Writes ``header`` (JSON) and ``arrays`` (as float32) to ``path``
        atomically (a temporary file renamed over it)."""
        encoded = json.dumps(header, sort_keys=True).encode("utf-8")
        path = os.fspath(path)
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(self.magic + struct.pack("<II", self.version, len(encoded)) + encoded)
                for array in arrays:
                    f.write(np.asarray(array).astype("<f4").tobytes())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a failed write leaves nothing behind
            raise

    def read(self, path):
        """``(header, data)``: the checked JSON header and the bytes after it."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        prefix = len(self.magic) + 8
        if len(data) < prefix or data[: len(self.magic)] != self.magic:
            raise self.error("%s is not an rwkv_cpp %s" % (path, self.kind))
        version, size = struct.unpack_from("<II", data, len(self.magic))
        if version != self.version:
            raise self.error("%s: %s format %d, this version reads %d" % (path, self.kind, version, self.version))
        if size > self.max_header or prefix + size > len(data):
            raise self.error("%s: truncated or corrupt header (%d bytes)" % (path, size))
        try:
            header = json.loads(data[prefix: prefix + size].decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # not UTF-8 or not JSON; nested too deep
            raise self.error("%s: corrupt header (%s: %s)" % (path, type(exc).__name__, exc)) from exc
        if not isinstance(header, dict) or any(key not in header for key in self.required):
            raise self.error("%s: the header lacks some of %s" % (path, ", ".join(self.required)))
        return header, data[prefix + size:]

    def floats(self, path, data, count):
        """The ``count`` float32 values of ``data`` (a copy); an error unless
        ``data`` holds exactly that many."""
        if len(data) != 4 * count:
            raise self.error("%s: %d bytes of data, expected %d" % (os.fspath(path), len(data), 4 * count))
        return np.frombuffer(data, dtype="<f4", count=count).astype(np.float32)
