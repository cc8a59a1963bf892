"""The output tensors and metadata of RWKV-4 files.

docs/FORMAT.md describes the result: vectors F32 and flattened to (D) or
(A), matrices and the embedding in the file's matrix type, the embedding
with blocks.0.ln0 applied and the decay stored as ``-exp(time_decay)``.
"""

from __future__ import annotations

from typing import List, Mapping

from .gguf_constants import GGMLType
from .gguf_writer import GGUFWriter
from .model import RWKV4Params
from .tensors import SourceTensor
from .transforms import (FORMAT_VERSION, LAYER_NORM_EPSILON, OutTensor, decay_transform,
                         emb_with_ln0, f32_of, vector_of)


def plan_rwkv4(tensors: Mapping[str, SourceTensor], hp: RWKV4Params) -> List[OutTensor]:
    """The output tensors of an RWKV-4 file, in file order (see FORMAT.md),
    as float32 data with their roles (storage.py then sets their types)."""
    D, A, F32 = hp.n_embed, hp.n_att, GGMLType.F32
    t = tensors
    emb, w0, b0 = t["emb.weight"], t["blocks.0.ln0.weight"], t["blocks.0.ln0.bias"]
    plan = [OutTensor("emb.weight", emb.shape, F32, lambda: emb_with_ln0(emb, w0, b0), "embedding")]
    for i in range(hp.n_layer):
        p = f"blocks.{i}."
        # the order of the model's tensor table (src/rwkv_model.cpp), which
        # python -m rwkv_cpp.quantize keeps: a converted file of a type then
        # equals the FP32 file quantized to it, byte for byte
        for name in ("ln1.weight", "ln1.bias", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r"):
            plan.append(OutTensor(p + name, (D,), F32, vector_of(t[p + name], D)))
        plan.append(OutTensor(p + "att.time_first", (A,), F32,
                              vector_of(t[p + "att.time_first"], A)))
        decay = t[p + "att.time_decay"]
        plan.append(OutTensor(p + "att.time_decay", (A,), F32,
                              lambda s=decay: decay_transform(s.to_f32().reshape(A))))
        for name in ("att.key.weight", "att.value.weight", "att.receptance.weight",
                     "att.output.weight"):
            plan.append(OutTensor(p + name, t[p + name].shape, F32, f32_of(t[p + name]), "matrix"))
        for name in ("ln2.weight", "ln2.bias"):
            plan.append(OutTensor(p + name, (D,), F32, vector_of(t[p + name], D)))
        for name in ("ffn.time_mix_k", "ffn.time_mix_r"):
            plan.append(OutTensor(p + name, (D,), F32, vector_of(t[p + name], D)))
        for name in ("ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight"):
            plan.append(OutTensor(p + name, t[p + name].shape, F32, f32_of(t[p + name]), "matrix"))
    for name in ("ln_out.weight", "ln_out.bias"):
        plan.append(OutTensor(name, (D,), F32, vector_of(t[name], D)))
    plan.append(OutTensor("head.weight", t["head.weight"].shape, F32, f32_of(t["head.weight"]), "head"))
    return plan


def add_rwkv4_metadata(writer: GGUFWriter, hp: RWKV4Params, file_type: int,
                       tokenizer: str, emb_ln0_applied: bool = True) -> None:
    """The GGUF keys of an rwkv_cpp RWKV-4 file (see FORMAT.md).

    emb_ln0_applied: False for files whose embedding is stored without ln0
    (imported rwkv.cpp models), for the runtime to apply it in the graph.
    """
    writer.add_string("general.architecture", "rwkv4")
    writer.add_u32("general.alignment", writer.alignment)
    writer.add_u32("rwkv.format_version", FORMAT_VERSION)
    writer.add_string("rwkv.version", "4")
    writer.add_u32("rwkv.n_vocab", hp.n_vocab)
    writer.add_u32("rwkv.n_embed", hp.n_embed)
    writer.add_u32("rwkv.n_layer", hp.n_layer)
    writer.add_u32("rwkv.n_att", hp.n_att)
    writer.add_u32("rwkv.n_ffn", hp.n_ffn)
    writer.add_f32("rwkv.layer_norm_epsilon", LAYER_NORM_EPSILON)
    writer.add_string("rwkv.tokenizer", tokenizer)
    writer.add_bool("rwkv.emb_ln0_applied", emb_ln0_applied)
    # last, where rwkv_quantize puts it (gguf_set_val moves a key it sets to
    # the end): a file converted to a type equals, byte for byte, the FP32
    # conversion quantized to that type
    writer.add_u32("general.file_type", file_type)
