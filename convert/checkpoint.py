"""Open an input checkpoint of any supported format, chosen by content.

The format is recognised from the file's first bytes, never from its name:
a zip archive is a ``torch.save`` checkpoint, an 8-byte length followed by
``{`` is safetensors.  Legacy torch files and GGUF files get a clear error.
"""

from __future__ import annotations

import os
import struct
from typing import Optional

from .errors import ConvertError
from .formats import LEGACY_MAGIC, LEGACY_TORCH_MAGIC, ZIP_MAGICS
from .gguf_constants import GGUF_MAGIC
from .gguf_reader import read_gguf
from .hf_layout import open_hf_folder
from .llama_gguf import llama_architecture, open_llama_gguf
from .pth import check_not_legacy, open_pth
from .safetensors import open_safetensors
from .tensors import Checkpoint


def sniff_format(path: str) -> str:
    """'pth', 'safetensors', 'rwkv_cpp_bin' or 'gguf', from the first bytes
    of the file.

    Raises:
        ConvertError: legacy torch format, or an unknown format.
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] in ZIP_MAGICS:
        return "pth"
    if head.startswith(LEGACY_TORCH_MAGIC):
        check_not_legacy(path)  # raises the legacy-format error
    if len(head) >= 4 and struct.unpack("<I", head[:4])[0] == LEGACY_MAGIC:
        return "rwkv_cpp_bin"
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1:
        return "safetensors"
    raise ConvertError(f"{path}: unrecognised file format (expected a torch.save "
                       ".pth zip archive or a .safetensors file)")


def open_checkpoint(path: str) -> Checkpoint:
    """Open a .pth or .safetensors checkpoint, or a Hugging Face model folder
    (its safetensors files); tensors load lazily.

    Use as a context manager (``with open_checkpoint(p) as ckpt: ...``).
    """
    path = str(path)
    if os.path.isdir(path):
        return open_hf_folder(path)
    fmt = sniff_format(path)
    if fmt == "rwkv_cpp_bin":
        raise ConvertError(f"{path}: an rwkv.cpp .bin model, not a checkpoint; convert it with "
                           "convert_file() or python -m rwkv_cpp.convert")
    if fmt == "gguf":
        return open_gguf(path)
    if fmt == "pth":
        return open_pth(path)
    return open_safetensors(path)


def open_gguf(path: str, world_vocab: Optional[str] = None) -> Checkpoint:
    """A llama.cpp RWKV-6/7 GGUF file as a checkpoint (official names);
    an rwkv_cpp GGUF file is refused (it is converted already)."""
    if llama_architecture(read_gguf(path)) is None:
        raise ConvertError(f"{path}: this is already an rwkv_cpp GGUF file")
    return open_llama_gguf(path, world_vocab)
