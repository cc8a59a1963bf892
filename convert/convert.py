"""Convert an official RWKV-4/5/6/7 checkpoint to the rwkv_cpp GGUF file.

Pipeline: recognise the input's format -> open the checkpoint (lazy
tensors) -> normalise names -> merge a LoRA adapter, if any -> set aside
a tuned initial state (time_state), if any -> detect the version once from all names ->
infer hyper-parameters and check every tensor -> plan the output tensors
(name, shape, type, a function producing the data) -> stream them into a
temporary GGUF file -> rename it to the destination.  rwkv.cpp ``.bin``
models take their own path (legacy_bin.py).  docs/FORMAT.md describes the
resulting file.

The public entry points come first; the steps they call follow, in order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import List, Mapping, Optional

import numpy as np

from .checkpoint import open_checkpoint, sniff_format
from .errors import ConvertError, naming_file
from .gguf_constants import GGML_NUMPY_DTYPE
from .gguf_writer import GGUFWriter
from .hf_layout import hf_to_official
from .keys import normalize_tensors
from .legacy_bin import legacy_to_gguf
from .lora import DEFAULT_LORA_ALPHA, merge_lora
from .model import (check_rwkv4_tensors, check_wkv_tensors, detect_version, infer_rwkv4_params,
                    infer_wkv_params)
from .output import (ConvertSummary, ProgressFn, check_output_path, resolve_ln_x_eps, resolve_tokenizer,
                     write_file_atomically)
from .plan_rwkv4 import add_rwkv4_metadata, plan_rwkv4
from .plan_wkv import add_wkv_metadata, plan_wkv
from .state_tuning import check_time_state, plan_time_state, split_time_state
from .storage import apply_storage, resolve_storage
from .tensors import Checkpoint
from .transforms import (FORMAT_VERSION, LAYER_NORM_EPSILON,  # noqa: F401 (re-exported)
                         OutTensor, decay_transform, emb_with_ln0, layer_norm_f64)  # noqa: F401

@dataclass(frozen=True)
class ConvertOptions:
    """What a conversion may change beyond the input (all optional).

    Attributes:
        out_type: storage of the matrices: FP32, FP16 (the default), Q8_0,
            Q5_0, Q5_1, Q4_0 or Q4_1 (the policy of docs/QUANTIZATION.md:
            vectors stay FP32, the head and embedding FP16 unless asked).
        quantize_head, quantize_emb: quantize head.weight / emb.weight too
            (block types only; default: the library's rwkv_quantize default).
        lora: an RWKV-LM-LoRA adapter checkpoint merged in (lora.py).
        lora_alpha: its alpha (default 32, RWKV-LM-LoRA's training default).
        n_threads: quantizer threads (0: every CPU; the bytes do not depend on it).
    """

    out_type: Optional[str] = None
    quantize_head: Optional[bool] = None
    quantize_emb: Optional[bool] = None
    lora: Optional[str] = None
    lora_alpha: Optional[float] = None
    n_threads: int = 0


def convert_file(src: str, dst: str, out_type: Optional[str] = None,
                 tokenizer: Optional[str] = None,
                 progress: Optional[ProgressFn] = None,
                 ln_x_eps: Optional[float] = None,
                 options: Optional[ConvertOptions] = None) -> ConvertSummary:
    """Convert an official RWKV-4/5/6/7 ``.pth`` or ``.safetensors`` file, a
    Hugging Face RWKV-5/6/7 model folder (or an rwkv.cpp ``.bin`` model,
    copied as stored) to GGUF.

    Args:
        src: input checkpoint (format recognised from its content), or a
            folder of safetensors files (a Hugging Face model folder).
        dst: output GGUF path; written to a temporary file, then renamed.
        out_type: the storage type of the matrices (see
            :class:`ConvertOptions`; default FP16); overrides
            ``options.out_type``.  Must be left out (None) for rwkv.cpp
            ``.bin`` inputs.
        tokenizer: ``'20B'``, ``'world'``, ``'bytes'``, ``'none'``; None
            infers it from n_vocab (50277: 20B, 65536: world, 256: bytes).
        progress: optional ``progress(done_bytes, total_bytes, tensor_name)``.
        ln_x_eps: RWKV-5/6/7 only: the epsilon of the ln_x GroupNorm to
            record in the file (default: 64e-5, the official value).  Only
            for models made with another value (the rwkv.cpp 5.x test
            fixtures used 1e-5; docs/FORMAT.md).
        options: the type's options and a LoRA adapter to merge.

    Returns:
        a :class:`ConvertSummary`.

    Raises:
        ConvertError: unreadable/unsafe/invalid input, with a clear message;
            UnsupportedVersionError (a subclass) for unsupported file versions.
        OSError: the input cannot be opened or the output cannot be written.
    """
    src, dst = str(src), str(dst)
    options = options or ConvertOptions()
    if out_type is not None:
        options = replace(options, out_type=out_type)
    check_output_path(dst, [src] + ([str(options.lora)] if options.lora is not None else []))
    with naming_file(src):
        if not os.path.isdir(src) and sniff_format(src) == "rwkv_cpp_bin":
            _check_bin_options(src, options)
            return legacy_to_gguf(src, dst, tokenizer, progress, ln_x_eps)
        with open_checkpoint(src) as ckpt:
            if options.lora is None:
                return convert_checkpoint(ckpt, dst, options, tokenizer, progress, ln_x_eps)
            with _open_adapter(str(options.lora)) as adapter:
                return convert_checkpoint(ckpt, dst, options, tokenizer, progress, ln_x_eps, adapter)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], dst: str,
                       out_type: str = "FP32", tokenizer: Optional[str] = None,
                       progress: Optional[ProgressFn] = None,
                       ln_x_eps: Optional[float] = None) -> ConvertSummary:
    """Convert an in-memory state dict of numpy arrays (e.g. a random model
    from :mod:`.random_weights`) to a GGUF file; float32 sources, no rounding."""
    return convert_checkpoint(Checkpoint.from_arrays(state_dict), dst, out_type,
                              tokenizer, progress, ln_x_eps)


def convert_checkpoint(ckpt: Checkpoint, dst: str, options=None,
                       tokenizer: Optional[str] = None,
                       progress: Optional[ProgressFn] = None,
                       ln_x_eps: Optional[float] = None,
                       adapter: Optional[Checkpoint] = None) -> ConvertSummary:
    """Convert an open :class:`Checkpoint` (and an open LoRA ``adapter``, if
    any) to a GGUF file at ``dst``.  ``options``: a :class:`ConvertOptions`
    or just the output type's name (None: FP16)."""
    if not isinstance(options, ConvertOptions):
        options = ConvertOptions(out_type=options)
    policy = resolve_storage(options.out_type, options.quantize_head, options.quantize_emb, options.n_threads)
    tensors = normalize_tensors(hf_to_official(ckpt.tensors))
    if adapter is not None:
        alpha = DEFAULT_LORA_ALPHA if options.lora_alpha is None else options.lora_alpha
        tensors, _, _ = merge_lora(tensors, normalize_tensors(adapter.tensors), alpha, adapter.path)
    tensors, time_state = split_time_state(tensors)
    shapes = {name: t.shape for name, t in tensors.items()}
    version = detect_version(shapes)
    eps = resolve_ln_x_eps(ln_x_eps, version)
    if version == "4":
        hp = infer_rwkv4_params(shapes)
        check_rwkv4_tensors(shapes, hp)
        plan = plan_rwkv4(tensors, hp)
        n_att, n_head, head_size = hp.n_att, 0, 0
    else:
        hp = infer_wkv_params(version, shapes)
        check_wkv_tensors(shapes, hp)
        plan = plan_wkv(tensors, hp)
        n_att, n_head, head_size = hp.n_embed, hp.n_head, hp.head_size
    if time_state:
        check_time_state(time_state, version, hp.n_layer, n_head, head_size)
        plan += plan_time_state(time_state, version)
    plan = apply_storage(plan, policy)
    # a llama.cpp file names its tokenizer (convert/llama_gguf.py)
    tok = resolve_tokenizer(tokenizer if tokenizer is not None else ckpt.metadata.get("llama_tokenizer"), hp.n_vocab)

    def write(f) -> int:
        writer = GGUFWriter(f)
        if version == "4":
            add_rwkv4_metadata(writer, hp, policy.file_type, tok)
        else:
            add_wkv_metadata(writer, hp, policy.file_type, tok, eps)
        for out in plan:
            writer.add_tensor_info(out.name, out.shape, out.ggml_type)
        writer.write_header()
        write_tensors(writer, plan, progress)
        return writer.finish()

    written = write_file_atomically(str(dst), write)
    return ConvertSummary(version, hp.n_vocab, hp.n_embed, hp.n_layer, n_att,
                          hp.n_ffn, policy.name, tok, len(plan), written, ckpt.format,
                          n_head, head_size, bool(time_state))


def write_tensors(writer: GGUFWriter, plan: List[OutTensor],
                  progress: Optional[ProgressFn]) -> None:
    """Stream the planned tensors, one in memory at a time."""
    total = sum(o.nbytes for o in plan)
    done = 0
    if progress:
        progress(0, total, "")
    for out in plan:
        data = out.produce()
        if out.ggml_type in GGML_NUMPY_DTYPE and tuple(data.shape) != tuple(out.shape):
            raise ConvertError(f"tensor '{out.name}': produced shape {data.shape}, "
                               f"planned {out.shape}")
        writer.write_tensor(out.name, data)
        del data
        done += out.nbytes
        if progress:
            progress(done, total, out.name)


def _check_bin_options(src: str, options: ConvertOptions) -> None:
    """rwkv.cpp .bin tensors are copied as stored (any type); the type is
    changed afterwards with python -m rwkv_cpp.quantize."""
    if options.out_type is not None and str(options.out_type).upper() != "AS-STORED":
        raise ConvertError(f"{src}: rwkv.cpp .bin files are converted as stored; leave out --type "
                           "and change the type afterwards with python -m rwkv_cpp.quantize")
    if options.lora is not None:
        raise ConvertError(f"{src}: a LoRA adapter is merged into a .pth or .safetensors base, "
                           "not into an rwkv.cpp .bin model")


def _open_adapter(path: str) -> Checkpoint:
    with naming_file(path):
        return open_checkpoint(path)


