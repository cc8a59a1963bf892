"""rwkv.cpp legacy ``.bin`` model files (file versions 100 and 101).

Layout (all integers little-endian int32): header ``magic 0x67676d66,
version, n_vocab, n_embed, n_layer, data_type``, then until the end of the
file one record per tensor: ``dim_count, key_length, data_type,
shape[dim_count]`` (ggml order, i.e. reversed PyTorch shape), the key
(UTF-8) and the raw data.  rwkv.cpp's converter squeezes ``.time_*``
tensors and stores RWKV-4's ``time_decay`` as ``-exp(time_decay)`` (which is
what our GGUF stores too); ``emb.weight`` is stored without ln0, so the GGUF
we write keeps ``blocks.0.ln0.*`` and sets ``rwkv.emb_ln0_applied = false``
(the runtime applies ln0 in the graph, in fp32, as rwkv.cpp does).

Quantized blocks of version 101 are ggml's current Q4_0/Q4_1/Q5_0/Q5_1/Q8_0
layouts and are copied byte for byte.  Version 100 quantized files use an
older, incompatible block layout and are refused.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .errors import ConvertError, UnsupportedVersionError
from .gguf_constants import GGMLType, ggml_nbytes
from .gguf_writer import GGUFWriter

LEGACY_MAGIC = 0x67676D66
SUPPORTED_VERSIONS = (100, 101)
MAX_DIMS = 4
MAX_KEY_LENGTH = 1024

#: rwkv.cpp data type code -> (ggml type, our rwkv_type code for general.file_type)
LEGACY_TYPES: Dict[int, Tuple[GGMLType, int]] = {
    0: (GGMLType.F32, 0),
    1: (GGMLType.F16, 1),
    2: (GGMLType.Q4_0, 5),
    3: (GGMLType.Q4_1, 6),
    7: (GGMLType.Q5_0, 3),
    8: (GGMLType.Q5_1, 4),
    9: (GGMLType.Q8_0, 2),
}


@dataclass
class LegacyTensor:
    name: str
    ne: Tuple[int, ...]          # ggml order
    ggml_type: GGMLType
    offset: int                  # of the data in the file
    nbytes: int

    @property
    def shape(self) -> Tuple[int, ...]:
        """PyTorch-order shape."""
        return tuple(reversed(self.ne))


@dataclass
class LegacyFile:
    path: str
    version: int
    n_vocab: int
    n_embed: int
    n_layer: int
    file_type: int               # rwkv_type code
    tensors: List[LegacyTensor]

    def tensor(self, name: str) -> LegacyTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise ConvertError(f"{self.path}: missing tensor '{name}'")


def is_legacy_bin(path: str) -> bool:
    """Whether the file starts with the rwkv.cpp magic."""
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and struct.unpack("<I", head)[0] == LEGACY_MAGIC


def _legacy_type(code: int, what: str, path: str) -> Tuple[GGMLType, int]:
    if code not in LEGACY_TYPES:
        raise ConvertError(f"{path}: {what} has unknown or unsupported data type code {code}")
    return LEGACY_TYPES[code]


def _read_record(f, path: str, pos: int, size: int, version: int) -> Tuple[LegacyTensor, int]:
    fixed = f.read(12)
    if len(fixed) != 12:
        raise ConvertError(f"{path}: truncated tensor header at offset {pos}")
    dim_count, key_length, dtype = struct.unpack("<iii", fixed)
    if not 1 <= dim_count <= MAX_DIMS:
        raise ConvertError(f"{path}: tensor at offset {pos} has {dim_count} dimensions (expected 1..{MAX_DIMS})")
    if not 1 <= key_length <= MAX_KEY_LENGTH:
        raise ConvertError(f"{path}: tensor at offset {pos} has a key of {key_length} bytes")
    raw = f.read(4 * dim_count + key_length)
    if len(raw) != 4 * dim_count + key_length:
        raise ConvertError(f"{path}: truncated tensor header at offset {pos}")
    ne = struct.unpack(f"<{dim_count}i", raw[:4 * dim_count])
    try:
        name = raw[4 * dim_count:].decode("utf-8")
    except UnicodeDecodeError:
        raise ConvertError(f"{path}: tensor key at offset {pos} is not UTF-8") from None
    if min(ne) <= 0:
        raise ConvertError(f"{path}: tensor '{name}' has a non-positive dimension {ne}")
    ggml_type, _ = _legacy_type(dtype, f"tensor '{name}'", path)
    if version == 100 and ggml_type not in (GGMLType.F32, GGMLType.F16):
        raise UnsupportedVersionError(
            f"{path}: a version-100 rwkv.cpp file with {ggml_type.name} tensors: its quantized blocks use an "
            "old, incompatible layout; quantize again from the FP32/FP16 model "
            "(python -m rwkv_cpp.quantize)")
    try:
        nbytes = ggml_nbytes(ggml_type, ne)
    except Exception as exc:
        raise ConvertError(f"{path}: tensor '{name}' of shape {ne}: {exc}") from None
    data_offset = pos + 12 + 4 * dim_count + key_length
    if data_offset + nbytes > size:
        raise ConvertError(f"{path}: tensor '{name}' ({nbytes} bytes at offset {data_offset}) extends past "
                           f"the end of the file ({size} bytes): the file is truncated")
    return LegacyTensor(name, tuple(ne), ggml_type, data_offset, nbytes), data_offset + nbytes


def read_legacy_bin(path: str) -> LegacyFile:
    """Parses the header and every tensor record (data stays on disk)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) != 24:
            raise ConvertError(f"{path}: too short for an rwkv.cpp header ({size} bytes)")
        magic, version, n_vocab, n_embed, n_layer, dtype = struct.unpack("<Iiiiii", head)
        if magic != LEGACY_MAGIC:
            raise ConvertError(f"{path}: not an rwkv.cpp .bin file (magic 0x{magic:08x})")
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersionError(
                f"{path}: rwkv.cpp file version {version} is not supported (supported: 100, 101)")
        if min(n_vocab, n_embed, n_layer) <= 0:
            raise ConvertError(f"{path}: bad header sizes n_vocab={n_vocab} n_embed={n_embed} n_layer={n_layer}")
        _, file_type = _legacy_type(dtype, "the header", path)
        tensors: List[LegacyTensor] = []
        seen = set()
        pos = 24
        while pos < size:
            f.seek(pos)
            t, pos = _read_record(f, path, pos, size, version)
            if t.name in seen:
                raise ConvertError(f"{path}: duplicate tensor '{t.name}'")
            seen.add(t.name)
            tensors.append(t)
    return LegacyFile(path, version, n_vocab, n_embed, n_layer, file_type, tensors)


def _infer_tokenizer(n_vocab: int) -> str:
    return {50277: "20B", 65536: "world", 256: "bytes"}.get(n_vocab, "")


def _check_rwkv4(lf: LegacyFile) -> Tuple[int, int]:
    """Version check from the whole key set; returns (n_att, n_ffn)."""
    from .model import detect_version

    version = detect_version({t.name: t.shape for t in lf.tensors})
    if version != "4":
        raise UnsupportedVersionError(
            f"{lf.path}: RWKV-{version} rwkv.cpp file detected; rwkv_cpp currently loads RWKV-4 only")
    n_att = lf.tensor("blocks.0.att.key.weight").shape[0]
    n_ffn = lf.tensor("blocks.0.ffn.key.weight").shape[0]
    return n_att, n_ffn


def _read_data(f, t: LegacyTensor) -> np.ndarray:
    f.seek(t.offset)
    raw = f.read(t.nbytes)
    if len(raw) != t.nbytes:
        raise ConvertError(f"tensor '{t.name}': truncated data")
    if t.ggml_type == GGMLType.F32:
        return np.frombuffer(raw, dtype="<f4").reshape(t.shape)
    if t.ggml_type == GGMLType.F16:
        return np.frombuffer(raw, dtype="<f2").reshape(t.shape)
    return np.frombuffer(raw, dtype=np.uint8)


def legacy_to_gguf(src: str, dst: str, tokenizer: Optional[str] = None,
                   progress: Optional[Callable[[int, int, str], None]] = None) -> "ConvertSummary":
    """Writes our GGUF from an rwkv.cpp ``.bin`` (tensors copied as stored;
    ln0 kept for the runtime to apply).  The runtime validates the tensor
    set and shapes when it loads the result."""
    from .convert import ConvertSummary, write_file_atomically

    lf = read_legacy_bin(src)
    n_att, n_ffn = _check_rwkv4(lf)
    tok = _infer_tokenizer(lf.n_vocab) if tokenizer is None else ("" if tokenizer == "none" else tokenizer)
    total = sum(t.nbytes for t in lf.tensors)

    def write(fout) -> int:
        w = GGUFWriter(fout)
        w.add_string("general.architecture", "rwkv4")
        w.add_u32("general.alignment", w.alignment)
        w.add_u32("general.file_type", lf.file_type)
        w.add_u32("rwkv.format_version", 1)
        w.add_string("rwkv.version", "4")
        for key, value in (("n_vocab", lf.n_vocab), ("n_embed", lf.n_embed), ("n_layer", lf.n_layer),
                           ("n_att", n_att), ("n_ffn", n_ffn)):
            w.add_u32("rwkv." + key, value)
        w.add_f32("rwkv.layer_norm_epsilon", 1e-5)
        w.add_string("rwkv.tokenizer", tok)
        w.add_bool("rwkv.emb_ln0_applied", False)
        w.add_string("rwkv.source", "rwkv.cpp .bin version %d" % lf.version)
        for t in lf.tensors:
            w.add_tensor_info(t.name, t.shape, t.ggml_type)
        w.write_header()
        done = 0
        with open(src, "rb") as fin:
            for t in lf.tensors:
                w.write_tensor(t.name, _read_data(fin, t))
                done += t.nbytes
                if progress:
                    progress(done, total, t.name)
        return w.finish()

    written = write_file_atomically(dst, write)
    type_names = {0: "FP32", 1: "FP16", 2: "Q8_0", 3: "Q5_0", 4: "Q5_1", 5: "Q4_0", 6: "Q4_1"}
    return ConvertSummary("4", lf.n_vocab, lf.n_embed, lf.n_layer, n_att, n_ffn, type_names[lf.file_type],
                          tok, len(lf.tensors), written, "rwkv_cpp_bin")
