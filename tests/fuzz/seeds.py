"""Tiny valid input files for the Python fuzz harnesses, made at run time.

Every writer here is independent of torch: ``write_pth`` emits the pickle
opcodes of a ``torch.save`` state dict by hand (the same records the
restricted unpickler of ``convert/pth.py`` reads), ``write_legacy_bin`` the
records of an rwkv.cpp ``.bin`` file.  The models are the smallest the
converter accepts (one or two layers, ``n_embed`` 8, 16 tokens), so one
conversion takes milliseconds.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Dict, Iterator, Tuple

import numpy as np

from rwkv_cpp.convert import make_state_dict, write_safetensors
from rwkv_cpp.convert.formats import LEGACY_MAGIC
from rwkv_cpp.convert.tensors import f32_to_bf16_bits

#: (version, n_layer) of the seed models; head size 4 so that 8 = 2 heads.
SEED_MODELS = (("4", 1), ("5.2", 1), ("6.0", 1), ("7.0", 2))
N_VOCAB, N_EMBED, HEAD_SIZE = 16, 8, 4

#: torch storage class and raw numpy dtype of each source dtype.
_PTH_DTYPES = {"F32": ("FloatStorage", "<f4"), "F16": ("HalfStorage", "<f2"),
               "BF16": ("BFloat16Storage", "<u2")}


def seed_state_dicts() -> Iterator[Tuple[str, Dict[str, np.ndarray]]]:
    """(label, state dict) of every seed model."""
    for version, n_layer in SEED_MODELS:
        sd = make_state_dict(version, N_VOCAB, N_EMBED, n_layer, head_size=HEAD_SIZE,
                             n_ffn=2 * N_EMBED, seed=1)
        yield "v" + version.replace(".", ""), sd


# -- .pth ----------------------------------------------------------------------

def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _unicode(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(items) -> bytes:
    return b"(" + b"".join(_int(v) for v in items) + b"t"


def _strides(shape) -> Tuple[int, ...]:
    out, step = [], 1
    for d in reversed(shape):
        out.append(step)
        step *= d
    return tuple(reversed(out))


def _tensor_record(key: str, storage: str, numel: int, offset: int, shape, stride) -> bytes:
    """``_rebuild_tensor_v2(persistent storage, offset, size, stride, False,
    OrderedDict())`` as protocol-2 opcodes."""
    pid = b"(" + _unicode("storage") + _global("torch", storage) + _unicode(key) + \
        _unicode("cpu") + _int(numel) + b"t"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"Q" + _int(offset) +
            _tuple(shape) + _tuple(stride) + b"\x89" + _global("collections", "OrderedDict") +
            b")R" + b"tR")


def pth_members(sd: Dict[str, np.ndarray], dtype: str = "F32",
                transposed: bool = False) -> Tuple[bytes, Dict[str, bytes]]:
    """(data.pkl bytes, {storage key: raw bytes}) of a torch.save state dict.

    ``transposed``: 2-D tensors are stored transposed and described by
    swapped strides (a non-contiguous view, as torch saves ``w.t()``).
    """
    storage, np_dtype = _PTH_DTYPES[dtype]
    body, storages = [], {}
    for i, (name, array) in enumerate(sd.items()):
        array = np.asarray(array, dtype=np.float32)
        raw = f32_to_bf16_bits(array) if dtype == "BF16" else array.astype(np_dtype)
        shape, stride = array.shape, _strides(array.shape)
        if transposed and array.ndim == 2:
            raw, stride = np.ascontiguousarray(raw.T), (1, array.shape[0])
        key = str(i)
        storages[key] = np.ascontiguousarray(raw).tobytes()
        body.append(_unicode(name) + _tensor_record(key, storage, array.size, 0, shape, stride))
    pkl = (b"\x80\x02" + _global("collections", "OrderedDict") + b")R" + b"(" +
           b"".join(body) + b"u" + b".")
    return pkl, storages


def zip_pth(pkl: bytes, storages: Dict[str, bytes], deflate: bool = False,
            prefix: str = "archive") -> bytes:
    """The bytes of a torch.save zip archive holding these members."""
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        z.writestr(f"{prefix}/byteorder", b"little")
        for key, raw in storages.items():
            z.writestr(f"{prefix}/data/{key}", raw)
        z.writestr(f"{prefix}/version", b"3\n")
    return out.getvalue()


def pth_seeds() -> Iterator[Tuple[str, bytes]]:
    """(name, bytes) of valid .pth files: every version, F32/F16/BF16,
    stored and deflated, contiguous and transposed matrices."""
    variants = (("F32", False, False), ("BF16", True, False), ("F16", False, True))
    for label, sd in seed_state_dicts():
        for dtype, deflate, transposed in variants:
            pkl, storages = pth_members(sd, dtype, transposed)
            name = f"{label}_{dtype.lower()}{'_deflate' if deflate else ''}{'_t' if transposed else ''}.pth"
            yield name, zip_pth(pkl, storages, deflate)


# -- safetensors ---------------------------------------------------------------

def safetensors_seeds(folder) -> Iterator[Tuple[str, bytes]]:
    """(name, bytes) of valid .safetensors files of every version."""
    for label, sd in seed_state_dicts():
        for dtype in ("F32", "BF16"):
            path = f"{folder}/{label}_{dtype.lower()}.safetensors"
            write_safetensors(path, sd, dtype=dtype, metadata={"format": "pt"})
            with open(path, "rb") as f:
                yield path.rsplit("/", 1)[-1], f.read()


# -- rwkv.cpp .bin -------------------------------------------------------------

def legacy_bin(sd: Dict[str, np.ndarray], n_layer: int, f16_matrices: bool = False) -> bytes:
    """An rwkv.cpp ``.bin`` (file version 101) of a state dict, each tensor
    stored as it is (matrices F16 when ``f16_matrices``)."""
    n_vocab, n_embed = sd["emb.weight"].shape
    out = [struct.pack("<Iiiiii", LEGACY_MAGIC, 101, n_vocab, n_embed, n_layer, 1 if f16_matrices else 0)]
    for name, array in sd.items():
        array = np.asarray(array, dtype=np.float32)
        half = f16_matrices and array.ndim == 2
        key = name.encode("utf-8")
        ne = tuple(reversed(array.shape))
        out.append(struct.pack(f"<iii{len(ne)}i", len(ne), len(key), 1 if half else 0, *ne) + key)
        out.append(array.astype("<f2" if half else "<f4").tobytes())
    return b"".join(out)


def legacy_bin_seeds() -> Iterator[Tuple[str, bytes]]:
    """(name, bytes) of valid rwkv.cpp .bin files of every version, F32
    and with F16 matrices."""
    for (label, sd), (_, n_layer) in zip(seed_state_dicts(), SEED_MODELS):
        yield f"{label}_f32.bin", legacy_bin(sd, n_layer)
        yield f"{label}_f16.bin", legacy_bin(sd, n_layer, f16_matrices=True)


def write_all(folder, seeds) -> None:
    """Write (name, bytes) pairs into ``folder``."""
    for name, data in seeds:
        with open(f"{folder}/{name}", "wb") as f:
            f.write(data)
