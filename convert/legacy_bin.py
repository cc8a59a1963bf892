"""rwkv.cpp legacy ``.bin`` model files (file versions 100 and 101).

Layout (all integers little-endian int32): header ``magic 0x67676d66,
version, n_vocab, n_embed, n_layer, data_type``, then until the end of the
file one record per tensor: ``dim_count, key_length, data_type,
shape[dim_count]`` (ggml order, i.e. reversed PyTorch shape), the key
(UTF-8) and the raw data.  rwkv.cpp's converter squeezes ``.time_*``
tensors and stores RWKV-4's ``time_decay`` as ``-exp(time_decay)`` (which is
what our GGUF stores too); ``emb.weight`` is stored without ln0, so the GGUF
we write keeps ``blocks.0.ln0.*`` and sets ``rwkv.emb_ln0_applied = false``
(the runtime applies ln0 in the graph, in fp32, as rwkv.cpp does).  RWKV-5,
6 and 7 files are reshaped to our layout (docs/FORMAT.md, "Files imported
from rwkv.cpp"): their LoRA matrices are already stored (out, in) as ours.

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

from .errors import ConvertError, UnsupportedVersionError, naming_file
from .formats import LEGACY_MAGIC
from .gguf_constants import GGMLType, ggml_nbytes
from .gguf_writer import GGUFWriter
from .model import RWKV4Params, WkvParams, detect_version
from .output import (ConvertSummary, ProgressFn, resolve_ln_x_eps, resolve_tokenizer,
                     write_file_atomically)
from .plan_rwkv4 import add_rwkv4_metadata
from .plan_wkv import add_wkv_metadata

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
    if n_layer > len(tensors):  # every layer has tensors: refuse before looping over n_layer
        raise ConvertError(f"{path}: the header's n_layer={n_layer} is impossible in a file of "
                           f"{len(tensors)} tensors")
    return LegacyFile(path, version, n_vocab, n_embed, n_layer, file_type, tensors)


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


@dataclass
class _Out:
    """One tensor of the GGUF we write: name, PyTorch shape, type, and a
    function of the open .bin file producing its data."""

    name: str
    shape: Tuple[int, ...]
    ggml_type: GGMLType
    produce: Callable[[object], np.ndarray]
    nbytes: int


def _as_stored(t: LegacyTensor, shape: Optional[Tuple[int, ...]] = None, vector: bool = False) -> _Out:
    """A tensor copied as stored, optionally reshaped (same elements).
    Vectors stored F16 are widened to F32 (exact; the runtime keeps vectors F32)."""
    shape = tuple(shape or t.shape)
    if int(np.prod(shape)) != int(np.prod(t.shape)):
        raise ConvertError(f"tensor '{t.name}' of shape {t.shape} cannot be viewed as {shape}")
    if t.ggml_type == GGMLType.F32 or (vector and t.ggml_type == GGMLType.F16):
        return _Out(t.name, shape, GGMLType.F32,
                    lambda f: _read_data(f, t).astype(np.float32).reshape(shape), 4 * int(np.prod(shape)))
    if vector:
        raise ConvertError(f"tensor '{t.name}': a parameter vector stored as {t.ggml_type.name}")
    if t.ggml_type == GGMLType.F16:
        return _Out(t.name, shape, t.ggml_type, lambda f: _read_data(f, t).reshape(shape), t.nbytes)
    return _Out(t.name, shape, t.ggml_type, lambda f: _read_data(f, t), t.nbytes)


def _vector_f32(t: LegacyTensor, name: str, shape: Tuple[int, ...],
                fn: Callable[[np.ndarray], np.ndarray], numels: Tuple[int, ...]) -> _Out:
    """An F32 tensor computed from a stored F32/F16 one of ``numels`` elements
    (the sizes ``fn`` accepts)."""
    if t.ggml_type not in (GGMLType.F32, GGMLType.F16):
        raise ConvertError(f"tensor '{t.name}': expected F32 or F16 data, found {t.ggml_type.name}")
    if int(np.prod(t.shape)) not in numels:
        raise ConvertError(f"tensor '{t.name}' of shape {t.shape}: expected "
                           f"{' or '.join(map(str, numels))} elements")
    return _Out(name, shape, GGMLType.F32,
                lambda f: np.ascontiguousarray(fn(_read_data(f, t).astype(np.float32)), dtype=np.float32),
                4 * int(np.prod(shape)))


def _rwkv4_params(lf: LegacyFile) -> RWKV4Params:
    """Hyper-parameters of an RWKV-4 rwkv.cpp file: the header and two shapes."""
    return RWKV4Params(lf.n_vocab, lf.n_embed, lf.n_layer, lf.tensor("blocks.0.att.key.weight").shape[0],
                       lf.tensor("blocks.0.ffn.key.weight").shape[0])


def _wkv_params(lf: LegacyFile, version: str) -> WkvParams:
    """Hyper-parameters of an RWKV-5/6/7 rwkv.cpp file, from its shapes."""
    head_from = {"6.0": "blocks.0.att.time_faaaa", "7.0": "blocks.0.att.r_k"}.get(version, "blocks.0.att.time_decay")
    n_head = lf.tensor(head_from).shape[0]
    if n_head <= 0 or lf.n_embed % n_head != 0:
        raise ConvertError(f"{lf.path}: {n_head} heads do not divide n_embed = {lf.n_embed}")
    lora = ()
    names = {t.name for t in lf.tensors}
    if version == "6.0":
        lora = (("time_mix", lf.tensor("blocks.0.att.time_maa_w1").shape[0] // 5),
                ("time_decay", lf.tensor("blocks.0.att.time_decay_w1").shape[0]))
    elif version == "7.0":
        v_layers = [i for i in range(lf.n_layer) if f"blocks.{i}.att.v1" in names]
        lora = (("decay", lf.tensor("blocks.0.att.w1").shape[0]), ("a", lf.tensor("blocks.0.att.a1").shape[0]),
                ("v", lf.tensor(f"blocks.{v_layers[0]}.att.v1").shape[0] if v_layers else 0),
                ("gate", lf.tensor("blocks.0.att.g1").shape[0]))
    n_ffn = lf.tensor("blocks.0.ffn.key.weight").shape[0]
    return WkvParams(version, lf.n_vocab, lf.n_embed, lf.n_layer, n_ffn, n_head, lf.n_embed // n_head, lora)


#: the six token-shift vectors rwkv.cpp concatenates into att.x_rwkvag (RWKV-7).
_V7_MIXES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")


def _wkv_outputs(lf: LegacyFile, hp) -> List[_Out]:
    """Our tensors from an RWKV-5/6/7 rwkv.cpp file: the inverse of rwkv.cpp's
    converter transforms where ours differ (docs/FORMAT.md)."""
    D, H, N = hp.n_embed, hp.n_head, hp.head_size
    outs: List[_Out] = []
    for t in lf.tensors:
        leaf = t.name.rsplit(".", 1)[-1]
        if t.name.endswith("att.x_rwkvag"):  # (6, 1, D) -> x_r, x_w, x_k, x_v, x_a, x_g
            prefix = t.name[: -len("x_rwkvag")]
            outs += [_vector_f32(t, prefix + m, (D,), lambda a, i=i: a.reshape(6, D)[i], (6 * D,))
                     for i, m in enumerate(_V7_MIXES)]
        elif hp.version.startswith("5") and leaf in ("time_decay", "time_first", "time_faaaa"):
            # stored exp(-exp(decay)) / exp(time_first) / time_faaaa, (H, 1, 1) or (H, N, 1):
            # ours is the same value per channel, (H, N), named time_faaaa for the bonus
            name = t.name.replace("time_first", "time_faaaa")
            outs.append(_vector_f32(t, name, (H, N), lambda a: np.broadcast_to(a.reshape(H, -1), (H, N)),
                                    (H, H * N)))
        elif leaf in ("time_faaaa", "r_k"):
            outs.append(_as_stored(t, (H, N), vector=True))
        elif hp.version == "6.0" and leaf == "time_decay":
            outs.append(_as_stored(t, (D,), vector=True))  # stored (H, N, 1); ours as in the checkpoint
        elif [d for d in t.shape if d != 1] == [D]:
            outs.append(_as_stored(t, (D,), vector=True))  # (D), (1, D), (1, 1, D)
        else:
            outs.append(_as_stored(t))
    return outs


def _v4_outputs(lf: LegacyFile) -> List[_Out]:
    return [_Out(t.name, t.shape, t.ggml_type, lambda f, t=t: _read_data(f, t), t.nbytes) for t in lf.tensors]


#: general.file_type (enum rwkv_type) -> the type's name in the summary.
_TYPE_NAMES = {0: "FP32", 1: "FP16", 2: "Q8_0", 3: "Q5_0", 4: "Q5_1", 5: "Q4_0", 6: "Q4_1"}


def legacy_to_gguf(src: str, dst: str, tokenizer: Optional[str] = None,
                   progress: Optional[ProgressFn] = None,
                   ln_x_eps: Optional[float] = None) -> ConvertSummary:
    """Writes our GGUF from an rwkv.cpp ``.bin`` (tensors copied as stored,
    quantized blocks byte for byte, with the per-version reshapes of
    docs/FORMAT.md; ln0 kept for the runtime to apply).  The runtime
    validates the tensor set and shapes when it loads the result.

    ln_x_eps: RWKV-5/6/7: the ln_x GroupNorm epsilon to record (default the
    official 64e-5).  A .bin file does not say which one its model was made
    with: rwkv.cpp's RWKV-5 test fixtures were made with 1e-5.
    """
    with naming_file(src):
        lf = read_legacy_bin(src)
        version = detect_version({t.name: t.shape for t in lf.tensors})
        eps = resolve_ln_x_eps(ln_x_eps, version)
        tok = resolve_tokenizer(tokenizer, lf.n_vocab)
        hp = _rwkv4_params(lf) if version == "4" else _wkv_params(lf, version)
        outs = _v4_outputs(lf) if version == "4" else _wkv_outputs(lf, hp)

    def write(fout) -> int:
        w = GGUFWriter(fout)
        if version == "4":
            add_rwkv4_metadata(w, hp, lf.file_type, tok, emb_ln0_applied=False)
        else:
            add_wkv_metadata(w, hp, lf.file_type, tok, eps, emb_ln0_applied=False)
        w.add_string("rwkv.source", "rwkv.cpp .bin version %d" % lf.version)
        for o in outs:
            w.add_tensor_info(o.name, o.shape, o.ggml_type)
        w.write_header()
        _write_outputs(w, src, outs, progress)
        return w.finish()

    with naming_file(src):
        written = write_file_atomically(dst, write)
    n_att, n_head, head_size = (hp.n_att, 0, 0) if version == "4" else (hp.n_embed, hp.n_head, hp.head_size)
    return ConvertSummary(version, lf.n_vocab, lf.n_embed, lf.n_layer, n_att, hp.n_ffn,
                          _TYPE_NAMES[lf.file_type], tok, len(outs), written, "rwkv_cpp_bin", n_head, head_size)


def _write_outputs(w: GGUFWriter, src: str, outs: List[_Out], progress: Optional[ProgressFn]) -> None:
    """Streams the tensors from the open .bin, one in memory at a time."""
    total = sum(o.nbytes for o in outs)
    done = 0
    with open(src, "rb") as fin:
        for o in outs:
            try:
                data = o.produce(fin)
            except ValueError as exc:  # numpy refusing a shape the plan let through
                raise ConvertError(f"{src}: tensor '{o.name}': {type(exc).__name__}: {exc}") from exc
            w.write_tensor(o.name, data)
            done += o.nbytes
            if progress:
                progress(done, total, o.name)
