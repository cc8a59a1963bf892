"""The output tensors and metadata of RWKV-5.x, 6.0 and 7.0 files.

docs/FORMAT.md describes the result.  Parameter vectors are stored F32 and
flattened to (D) or (H, N); the square matrices and the embedding and head
take the file's matrix type; the LoRA matrices (v6, v7) are stored
transposed, as (out_features, in_features) like every other matrix, so that
``ggml_mul_mat(W, x)`` computes the official ``x @ W``.
"""

from __future__ import annotations

from typing import Callable, List, Mapping, Optional

import numpy as np

from .gguf_constants import GGMLType
from .gguf_writer import GGUFWriter
from .model import WkvParams, v5_bonus_name
from .tensors import SourceTensor
from .transforms import (FORMAT_VERSION, LAYER_NORM_EPSILON, LN_X_EPSILON, OutTensor, emb_with_ln0, exp_f32,
                         exp_neg_exp)

#: general.architecture of each version.
ARCHITECTURES = {"5.0": "rwkv5", "5.1": "rwkv5", "5.2": "rwkv5", "6.0": "rwkv6", "7.0": "rwkv7"}
#: metadata key of each LoRA rank.
LORA_KEYS = {"time_mix": "rwkv.time_mix_lora_dim", "time_decay": "rwkv.time_decay_lora_dim",
             "decay": "rwkv.decay_lora_dim", "a": "rwkv.a_lora_dim", "v": "rwkv.v_lora_dim",
             "gate": "rwkv.gate_lora_dim"}

F32 = GGMLType.F32


class _Planner:
    """Appends the output tensors of one file (float32 data and a role;
    storage.py sets their types), sharing the source tensors."""

    def __init__(self, tensors: Mapping[str, SourceTensor], hp: WkvParams):
        self.t, self.hp = tensors, hp
        self.plan: List[OutTensor] = []

    def add(self, name: str, shape: tuple, produce: Callable[[], np.ndarray], role: str = "vector") -> None:
        self.plan.append(OutTensor(name, tuple(shape), F32, produce, role))

    def vector(self, name: str, shape: Optional[tuple] = None) -> None:
        """A parameter, squeezed to (D) (or ``shape``), as F32."""
        src = self.t[name]
        shape = shape or (self.hp.n_embed,)
        self.add(name, shape, lambda: src.to_f32().reshape(shape))

    def matrix(self, name: str, role: str = "matrix") -> None:
        """A matrix, as is."""
        src = self.t[name]
        self.add(name, src.shape, src.to_f32, role)

    def transposed(self, name: str, axes: tuple = (1, 0)) -> None:
        """A LoRA matrix, transposed to (out, in) (time_maa_w2: (5, E, D) -> (5, D, E))."""
        src = self.t[name]
        shape = tuple(src.shape[a] for a in axes)
        self.add(name, shape, lambda: np.ascontiguousarray(src.to_f32().transpose(axes)), "low_rank")


def _per_channel(values: np.ndarray, hp: WkvParams) -> np.ndarray:
    """(H) per-head values (5.0/5.1) broadcast to (H, N); (H, N) kept."""
    values = values.reshape(hp.n_head, -1)
    return np.ascontiguousarray(np.broadcast_to(values, (hp.n_head, hp.head_size)), dtype=np.float32)


def _v5_layer(pl: _Planner, p: str, bonus: str) -> None:
    hp, HN = pl.hp, (pl.hp.n_head, pl.hp.head_size)
    decay, u = pl.t[p + "att.time_decay"], pl.t[p + "att." + bonus]
    for m in "kvr":
        pl.vector(p + "att.time_mix_" + m)
    # w = exp(-exp(time_decay)) and u = time_faaaa or exp(time_first), as the
    # official loader computes them, per channel
    pl.add(p + "att.time_decay", HN, lambda: _per_channel(exp_neg_exp(decay.to_f32()), hp))
    to_u = (lambda: u.to_f32()) if bonus == "time_faaaa" else (lambda: exp_f32(u.to_f32()))
    pl.add(p + "att.time_faaaa", HN, lambda: _per_channel(to_u(), hp))
    if hp.has_gate:
        pl.vector(p + "att.time_mix_g")


def _v6_layer(pl: _Planner, p: str) -> None:
    hp = pl.hp
    for m in "xwkvrg":
        pl.vector(p + "att.time_maa_" + m)
    pl.transposed(p + "att.time_maa_w1")
    pl.transposed(p + "att.time_maa_w2", (0, 2, 1))
    pl.vector(p + "att.time_decay")  # as is: exp(-exp(decay + LoRA)) in the graph
    pl.transposed(p + "att.time_decay_w1")
    pl.transposed(p + "att.time_decay_w2")
    pl.vector(p + "att.time_faaaa", (hp.n_head, hp.head_size))


def _v7_layer(pl: _Planner, p: str, layer: int) -> None:
    hp = pl.hp
    for m in "rwkvag":
        pl.vector(p + "att.x_" + m)
    for name in ("w0", "a0", "k_k", "k_a"):
        pl.vector(p + "att." + name)
    pl.vector(p + "att.r_k", (hp.n_head, hp.head_size))
    _ffn(pl, p)  # before the LoRAs, as in the model's tensor table
    for lora in ("w", "a", "g"):
        pl.transposed(p + f"att.{lora}1")
        pl.transposed(p + f"att.{lora}2")
    if layer > 0:  # layer 0's v0/v1/v2 are unused by the official code: not stored
        pl.vector(p + "att.v0")
        pl.transposed(p + "att.v1")
        pl.transposed(p + "att.v2")


def _attention_common(pl: _Planner, p: str, gate: bool) -> None:
    for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"):
        pl.vector(p + name)
    for name in ("receptance", "key", "value", "output"):
        pl.matrix(p + f"att.{name}.weight")
    pl.vector(p + "att.ln_x.weight")
    pl.vector(p + "att.ln_x.bias")
    if gate:
        pl.matrix(p + "att.gate.weight")


def _ffn(pl: _Planner, p: str) -> None:
    version = pl.hp.version
    if version == "7.0":
        pl.vector(p + "ffn.x_k")
        names = ("key", "value")
    else:
        mix = "time_maa_" if version == "6.0" else "time_mix_"
        pl.vector(p + f"ffn.{mix}k")
        pl.vector(p + f"ffn.{mix}r")
        names = ("key", "receptance", "value")
    for name in names:
        pl.matrix(p + f"ffn.{name}.weight")


def plan_wkv(tensors: Mapping[str, SourceTensor], hp: WkvParams) -> List[OutTensor]:
    """The output tensors of an RWKV-5/6/7 file (FORMAT.md), in the order of
    the model's tensor table (src/rwkv_model.cpp), which python -m
    rwkv_cpp.quantize keeps: a file converted to a type then equals the FP32
    file quantized to it, byte for byte."""
    pl = _Planner(tensors, hp)
    emb, w0, b0 = tensors["emb.weight"], tensors["blocks.0.ln0.weight"], tensors["blocks.0.ln0.bias"]
    # v5/v6: ln0(emb) rounded like the checkpoint; v7: in float32 (the official
    # RWKV_x070 loader widens every tensor to the strategy's dtype first)
    round_to_source = hp.version != "7.0"
    pl.add("emb.weight", emb.shape, lambda: emb_with_ln0(emb, w0, b0, round_to_source), "embedding")
    bonus = v5_bonus_name({name: t.shape for name, t in tensors.items()})
    for i in range(hp.n_layer):
        p = f"blocks.{i}."
        _attention_common(pl, p, hp.has_gate and hp.version != "7.0")
        if hp.version.startswith("5"):
            _v5_layer(pl, p, bonus)
            _ffn(pl, p)
        elif hp.version == "6.0":
            _v6_layer(pl, p)
            _ffn(pl, p)
        else:
            _v7_layer(pl, p, i)
    pl.vector("ln_out.weight")
    pl.vector("ln_out.bias")
    pl.matrix("head.weight", "head")
    return pl.plan


def add_wkv_metadata(writer: GGUFWriter, hp: WkvParams, file_type: int, tokenizer: str,
                     ln_x_eps: float = LN_X_EPSILON, emb_ln0_applied: bool = True) -> None:
    """The GGUF keys of an rwkv_cpp RWKV-5/6/7 file (see FORMAT.md)."""
    writer.add_string("general.architecture", ARCHITECTURES[hp.version])
    writer.add_u32("general.alignment", writer.alignment)
    writer.add_u32("rwkv.format_version", FORMAT_VERSION)
    writer.add_string("rwkv.version", hp.version)
    for key in ("n_vocab", "n_embed", "n_layer", "n_ffn", "n_head", "head_size"):
        writer.add_u32("rwkv." + key, getattr(hp, key))
    for name, rank in hp.lora:
        writer.add_u32(LORA_KEYS[name], rank)
    writer.add_f32("rwkv.layer_norm_epsilon", LAYER_NORM_EPSILON)
    writer.add_f32("rwkv.ln_x_epsilon", ln_x_eps)
    writer.add_string("rwkv.tokenizer", tokenizer)
    writer.add_bool("rwkv.emb_ln0_applied", emb_ln0_applied)
    # last, where rwkv_quantize puts it (gguf_set_val moves a key it sets to
    # the end): a file converted to a type equals, byte for byte, the FP32
    # conversion quantized to that type
    writer.add_u32("general.file_type", file_type)
