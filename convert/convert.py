"""Convert an official RWKV-4/5/6/7 checkpoint to the rwkv_cpp GGUF file.

Pipeline: recognise the input's format -> open the checkpoint (lazy
tensors) -> normalise names -> detect the version once from all names ->
infer hyper-parameters and check every tensor -> plan the output tensors
(name, shape, type, a function producing the data) -> stream them into a
temporary GGUF file -> rename it to the destination.  rwkv.cpp ``.bin``
models take their own path (legacy_bin.py).  docs/FORMAT.md describes the
resulting file.

The public entry points come first; the steps they call follow, in order.
"""

from __future__ import annotations

from typing import List, Mapping, Optional

import numpy as np

from .checkpoint import open_checkpoint, sniff_format
from .errors import ConvertError, naming_file
from .gguf_constants import GGMLType
from .gguf_writer import GGUFWriter
from .keys import normalize_tensors
from .legacy_bin import legacy_to_gguf
from .model import (check_rwkv4_tensors, check_wkv_tensors, detect_version, infer_rwkv4_params,
                    infer_wkv_params)
from .output import (ConvertSummary, ProgressFn, check_output_path, resolve_ln_x_eps, resolve_tokenizer,
                     write_file_atomically)
from .plan_rwkv4 import add_rwkv4_metadata, plan_rwkv4
from .plan_wkv import add_wkv_metadata, plan_wkv
from .tensors import Checkpoint
from .transforms import (FORMAT_VERSION, LAYER_NORM_EPSILON,  # noqa: F401 (re-exported)
                         OutTensor, decay_transform, emb_with_ln0, layer_norm_f64)  # noqa: F401

#: enum rwkv_type of rwkv.h -> (general.file_type, ggml type of matrices).
OUTPUT_TYPES = {"FP32": (0, GGMLType.F32), "FP16": (1, GGMLType.F16)}


def convert_file(src: str, dst: str, out_type: Optional[str] = None,
                 tokenizer: Optional[str] = None,
                 progress: Optional[ProgressFn] = None,
                 ln_x_eps: Optional[float] = None) -> ConvertSummary:
    """Convert an official RWKV-4/5/6/7 ``.pth`` or ``.safetensors`` file (or
    an rwkv.cpp ``.bin`` model, copied as stored) to GGUF.

    Args:
        src: input checkpoint (format recognised from its content).
        dst: output GGUF path; written to a temporary file, then renamed.
        out_type: ``'FP32'`` (the default) or ``'FP16'``: storage type of
            the matrices (and of the embedding); vectors are always FP32.
            Must be left out (None) for rwkv.cpp ``.bin`` inputs.
        tokenizer: ``'20B'``, ``'world'``, ``'bytes'``, ``'none'``; None
            infers it from n_vocab (50277: 20B, 65536: world, 256: bytes).
        progress: optional ``progress(done_bytes, total_bytes, tensor_name)``.
        ln_x_eps: RWKV-5/6/7 only: the epsilon of the ln_x GroupNorm to
            record in the file (default: 64e-5, the official value).  Only
            for models made with another value (the rwkv.cpp 5.x test
            fixtures used 1e-5; docs/FORMAT.md).

    Returns:
        a :class:`ConvertSummary`.

    Raises:
        ConvertError: unreadable/unsafe/invalid input, with a clear message;
            UnsupportedVersionError (a subclass) for unsupported file versions.
        OSError: the input cannot be opened or the output cannot be written.
    """
    src, dst = str(src), str(dst)
    check_output_path(dst, [src])
    with naming_file(src):
        if sniff_format(src) == "rwkv_cpp_bin":
            _check_bin_out_type(src, out_type)
            return legacy_to_gguf(src, dst, tokenizer, progress, ln_x_eps)
        with open_checkpoint(src) as ckpt:
            return convert_checkpoint(ckpt, dst, "FP32" if out_type is None else out_type,
                                      tokenizer, progress, ln_x_eps)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], dst: str,
                       out_type: str = "FP32", tokenizer: Optional[str] = None,
                       progress: Optional[ProgressFn] = None,
                       ln_x_eps: Optional[float] = None) -> ConvertSummary:
    """Convert an in-memory state dict of numpy arrays (e.g. a random model
    from :mod:`.random_weights`) to a GGUF file; float32 sources, no rounding."""
    return convert_checkpoint(Checkpoint.from_arrays(state_dict), dst, out_type,
                              tokenizer, progress, ln_x_eps)


def convert_checkpoint(ckpt: Checkpoint, dst: str, out_type: str = "FP32",
                       tokenizer: Optional[str] = None,
                       progress: Optional[ProgressFn] = None,
                       ln_x_eps: Optional[float] = None) -> ConvertSummary:
    """Convert an open :class:`Checkpoint` to a GGUF file at ``dst``."""
    type_name, file_type, matrix_type = resolve_output_type(out_type)
    tensors = normalize_tensors(ckpt.tensors)
    shapes = {name: t.shape for name, t in tensors.items()}
    version = detect_version(shapes)
    eps = resolve_ln_x_eps(ln_x_eps, version)
    if version == "4":
        hp = infer_rwkv4_params(shapes)
        check_rwkv4_tensors(shapes, hp)
        plan = plan_rwkv4(tensors, hp, matrix_type)
        n_att, n_head, head_size = hp.n_att, 0, 0
    else:
        hp = infer_wkv_params(version, shapes)
        check_wkv_tensors(shapes, hp)
        plan = plan_wkv(tensors, hp, matrix_type)
        n_att, n_head, head_size = hp.n_embed, hp.n_head, hp.head_size
    tok = resolve_tokenizer(tokenizer, hp.n_vocab)

    def write(f) -> int:
        writer = GGUFWriter(f)
        if version == "4":
            add_rwkv4_metadata(writer, hp, file_type, tok)
        else:
            add_wkv_metadata(writer, hp, file_type, tok, eps)
        for out in plan:
            writer.add_tensor_info(out.name, out.shape, out.ggml_type)
        writer.write_header()
        write_tensors(writer, plan, progress)
        return writer.finish()

    written = write_file_atomically(str(dst), write)
    return ConvertSummary(version, hp.n_vocab, hp.n_embed, hp.n_layer, n_att,
                          hp.n_ffn, type_name, tok, len(plan), written, ckpt.format,
                          n_head, head_size)


def resolve_output_type(out_type: str):
    """Normalise 'fp32'/'FP16'... -> ('FP32', file_type, matrix ggml type)."""
    key = str(out_type).upper()
    if key not in OUTPUT_TYPES:
        raise ConvertError(f"unknown output type {out_type!r}; choose FP32 or FP16 "
                           "(quantized types are not supported by the converter yet)")
    return (key,) + OUTPUT_TYPES[key]


def write_tensors(writer: GGUFWriter, plan: List[OutTensor],
                  progress: Optional[ProgressFn]) -> None:
    """Stream the planned tensors, one in memory at a time."""
    total = sum(o.nbytes for o in plan)
    done = 0
    if progress:
        progress(0, total, "")
    for out in plan:
        data = out.produce()
        if tuple(data.shape) != tuple(out.shape):
            raise ConvertError(f"tensor '{out.name}': produced shape {data.shape}, "
                               f"planned {out.shape}")
        writer.write_tensor(out.name, data)
        del data
        done += out.nbytes
        if progress:
            progress(done, total, out.name)


def _check_bin_out_type(src: str, out_type: Optional[str]) -> None:
    """rwkv.cpp .bin tensors are copied as stored (any type); the type is
    changed afterwards with python -m rwkv_cpp.quantize."""
    if out_type is not None and str(out_type).upper() != "AS-STORED":
        raise ConvertError(f"{src}: rwkv.cpp .bin files are converted as stored; leave out --type "
                           "and change the type afterwards with python -m rwkv_cpp.quantize")


