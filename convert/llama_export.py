"""Write llama.cpp's GGUF layout (``python -m rwkv_cpp.convert IN OUT
--layout llama.cpp``): an RWKV-6 or RWKV-7 checkpoint (any input the
converter reads) as an ``rwkv6``/``rwkv7`` file llama.cpp loads, with its
tensor names and layouts, the metadata keys its loader requires and the
World vocabulary as ``tokenizer.ggml.*`` keys (convert/llama_gguf.py has
the tables; docs/FORMAT.md describes the result)."""

from __future__ import annotations

from typing import Optional

from .checkpoint import open_checkpoint
from .convert import write_tensors
from .errors import ConvertError, naming_file
from .gguf_writer import GGUFWriter
from .hf_layout import hf_to_official
from .keys import normalize_tensors
from .llama_gguf import LAYER_RULES, add_llama_metadata, plan_llama, read_world_vocab
from .model import check_wkv_tensors, detect_version, infer_wkv_params
from .output import ConvertSummary, ProgressFn, write_file_atomically
from .storage import OUTPUT_TYPES
from .tensors import Checkpoint


def export_llama_file(src: str, dst: str, world_vocab: str, out_type: Optional[str] = None,
                      progress: Optional[ProgressFn] = None) -> ConvertSummary:
    """Convert an RWKV-6/7 checkpoint (``.pth``, ``.safetensors``, a Hugging
    Face folder or a llama.cpp GGUF file) to a llama.cpp GGUF file.

    Args:
        world_vocab: the World vocabulary file (``rwkv_vocab_v20230424.txt``);
            its first n_vocab - 1 tokens become the file's tokens after ``<s>``.
        out_type: 'FP32' (default) or 'FP16': the matrices' storage.

    Raises:
        ConvertError: not an RWKV-6/7 model, or an unreadable input.
    """
    src, dst = str(src), str(dst)
    with naming_file(src), open_checkpoint(src) as ckpt:
        return export_llama_checkpoint(ckpt, dst, world_vocab, out_type or "FP32", progress)


#: the types of llama.cpp files written here (quantize them with llama-quantize).
LLAMA_OUTPUT_TYPES = ("FP32", "FP16")


def resolve_output_type(out_type: str):
    """'fp32'/'FP16' -> ('FP32', file_type, matrix ggml type)."""
    key = str(out_type).upper()
    if key not in LLAMA_OUTPUT_TYPES:
        raise ConvertError(f"--layout llama.cpp writes FP32 or FP16, not {out_type!r} "
                           "(quantize the result with llama.cpp's llama-quantize)")
    return (key,) + OUTPUT_TYPES[key]


def export_llama_checkpoint(ckpt: Checkpoint, dst: str, world_vocab: str, out_type: str = "FP32",
                            progress: Optional[ProgressFn] = None) -> ConvertSummary:
    """:func:`export_llama_file` of an open checkpoint."""
    type_name, file_type, matrix_type = resolve_output_type(out_type)
    tensors = normalize_tensors(hf_to_official(ckpt.tensors))
    shapes = {name: t.shape for name, t in tensors.items()}
    version = detect_version(shapes)
    if version not in LAYER_RULES:
        raise ConvertError(f"llama.cpp runs RWKV-6 and RWKV-7 models; this is an RWKV-{version} model")
    hp = infer_wkv_params(version, shapes)
    check_wkv_tensors(shapes, hp)
    world = read_world_vocab(world_vocab)
    plan = plan_llama(tensors, hp, matrix_type)

    def write(f) -> int:
        writer = GGUFWriter(f)
        add_llama_metadata(writer, hp, file_type, world)
        for out in plan:
            writer.add_tensor_info(out.name, out.shape, out.ggml_type)
        writer.write_header()
        write_tensors(writer, plan, progress)
        return writer.finish()

    written = write_file_atomically(dst, write)
    return ConvertSummary(version, hp.n_vocab, hp.n_embed, hp.n_layer, hp.n_embed, hp.n_ffn, type_name,
                          "world (llama.cpp)", len(plan), written, ckpt.format, hp.n_head, hp.head_size)
