"""The Hugging Face layouts of RWKV-5, 6 and 7, both ways.

One table per version maps every tensor of the official (BlinkDL) state
dict to its Hugging Face name, with how the data changes between the two:

- RWKV-5.2, ``Rwkv5ForCausalLM`` (the ``RWKV/rwkv-5-world-*`` ports) and
  RWKV-6.0, ``Rwkv6ForCausalLM`` (``RWKV/v6-Finch-*-HF``): the official
  tensors under other names (``rwkv.blocks.N.attention.*``,
  ``feed_forward.*``, ``time_mix_key`` for ``time_mix_k``, ...), the data
  unchanged: decays raw (the model computes ``exp(-exp(.))`` itself),
  matrices ``(out, in)``, LoRA matrices as the official ``x @ W`` ones.
- RWKV-7.0, ``RWKV7ForCausalLM`` in the flash-linear-attention layout
  (``RWKV/*-HF``, ``fla-hub/rwkv7-*``): ``model.layers.N.attn.*``; each
  LoRA is a ``nn.Sequential(Linear, act, Linear)``, so its two matrices
  are ``torch.nn.Linear`` weights, the **transposes** of the official
  ``w1`` (D, r) / ``w2`` (r, D), and the offset ``w0`` is the second
  Linear's bias; ``k_k``, ``k_a`` and the LoRA offsets are (D) vectors
  (official (1, 1, D)); layer 0 has no value LoRA.

:func:`write_hf_folder` writes an official checkpoint as a Hugging Face
folder (``model.safetensors``, ``config.json``, the World vocabulary file)
that llama.cpp's ``convert_hf_to_gguf.py`` accepts; :func:`hf_to_official`
maps the tensors of such a folder back to official names and layouts
(the converter reads HF folders through :func:`open_hf_folder`).
docs/FORMAT.md lists the tables.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

import numpy as np

from .errors import ConvertError
from .keys import strip_wrapper_prefixes
from .model import check_wkv_tensors, detect_version, infer_wkv_params
from .safetensors import open_safetensors, write_safetensors
from .tensors import Checkpoint, SourceTensor

#: the ``architectures`` entry of config.json of each version.
HF_ARCHITECTURES = {"5.2": "Rwkv5ForCausalLM", "6.0": "Rwkv6ForCausalLM", "7.0": "RWKV7ForCausalLM"}
#: the ``model_type`` of config.json of each version.
HF_MODEL_TYPES = {"5.2": "rwkv5", "6.0": "rwkv6", "7.0": "rwkv7"}
#: the World vocabulary file llama.cpp's converter reads from the folder.
WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt"
#: a ``rescale_every`` of the RWKV-5/6 ports: 6, their default.  The
#: weights in the folder are never rescaled (the HF model divides them at
#: load time, for fp16 inference; llama.cpp's converter does it in the file).
DEFAULT_RESCALE_EVERY = 6

# How the data of a tensor changes between the layouts:
SAME = "same"            # same shape and data
TRANSPOSE = "transpose"  # 2-D, transposed (official x @ W <-> nn.Linear weight)
VECTOR = "vector"        # HF (D), official (1, 1, D) (or squeezed)
VECTOR3 = "vector3"      # HF (1, 1, D), official (1, 1, D) (or squeezed)


@dataclass(frozen=True)
class Rule:
    """One tensor: its official name, its HF name (``{i}``: the layer), how
    the data changes, and which layers have it (``all``, ``first``: layer 0
    only, ``later``: layers 1 and up)."""

    official: str
    hf: str
    kind: str = SAME
    layers: str = "all"


def _rules(prefix_o: str, prefix_h: str, pairs, kind: str = SAME, layers: str = "all") -> List[Rule]:
    return [Rule(prefix_o + o, prefix_h + h, kind, layers) for o, h in pairs]


def _v5_v6_common() -> List[Rule]:
    """What RWKV-5.2 and 6.0 ports share: norms, the square matrices, ln_x."""
    o, h = "blocks.{i}.", "rwkv.blocks.{i}."
    rules = _rules(o, h, [(f"{n}.{p}", f"{n}.{p}") for n in ("ln1", "ln2") for p in ("weight", "bias")])
    rules += _rules(o + "att.", h + "attention.",
                    [(f"{m}.weight", f"{m}.weight") for m in ("receptance", "key", "value", "gate", "output")]
                    + [("ln_x.weight", "ln_x.weight"), ("ln_x.bias", "ln_x.bias"),
                       ("time_faaaa", "time_faaaa"), ("time_decay", "time_decay")])
    rules += _rules(o + "ffn.", h + "feed_forward.",
                    [(f"{m}.weight", f"{m}.weight") for m in ("key", "receptance", "value")])
    return rules


def _top_rules(version: str) -> List[Rule]:
    """Embedding, ln0, ln_out and head."""
    if version == "7.0":
        names = [("emb.weight", "model.embeddings.weight"),
                 ("blocks.0.ln0.weight", "model.layers.0.pre_norm.weight"),
                 ("blocks.0.ln0.bias", "model.layers.0.pre_norm.bias"),
                 ("ln_out.weight", "model.norm.weight"), ("ln_out.bias", "model.norm.bias"),
                 ("head.weight", "lm_head.weight")]
    else:
        names = [("emb.weight", "rwkv.embeddings.weight"),
                 ("blocks.0.ln0.weight", "rwkv.blocks.0.pre_ln.weight"),
                 ("blocks.0.ln0.bias", "rwkv.blocks.0.pre_ln.bias"),
                 ("ln_out.weight", "rwkv.ln_out.weight"), ("ln_out.bias", "rwkv.ln_out.bias"),
                 ("head.weight", "head.weight")]
    return [Rule(o, h) for o, h in names]


def _v5_rules() -> List[Rule]:
    long = {"k": "key", "v": "value", "r": "receptance", "g": "gate"}
    rules = _v5_v6_common()
    rules += _rules("blocks.{i}.att.", "rwkv.blocks.{i}.attention.",
                    [(f"time_mix_{m}", f"time_mix_{long[m]}") for m in "kvrg"], VECTOR3)
    rules += _rules("blocks.{i}.ffn.", "rwkv.blocks.{i}.feed_forward.",
                    [(f"time_mix_{m}", f"time_mix_{long[m]}") for m in "kr"], VECTOR3)
    return rules


def _v6_rules() -> List[Rule]:
    rules = _v5_v6_common()
    att_o, att_h = "blocks.{i}.att.", "rwkv.blocks.{i}.attention."
    rules += _rules(att_o, att_h, [(f"time_maa_{m}", f"time_maa_{m}") for m in "xwkvrg"], VECTOR3)
    rules += _rules(att_o, att_h, [(n, n) for n in ("time_maa_w1", "time_maa_w2", "time_decay_w1",
                                                    "time_decay_w2")])
    rules += _rules("blocks.{i}.ffn.", "rwkv.blocks.{i}.feed_forward.",
                    [(f"time_maa_{m}", f"time_maa_{m}") for m in "kr"], VECTOR3)
    return rules


def _v7_lora(short: str, name: str, bias: bool, layers: str = "all") -> List[Rule]:
    """An official ``{short}1`` (D, r), ``{short}2`` (r, D) [, ``{short}0``
    (1, 1, D)] as fla's ``{name}_lora.lora.0.weight`` (r, D),
    ``lora.2.weight`` (D, r) [, ``lora.2.bias`` (D)]."""
    o, h = f"blocks.{{i}}.att.{short}", f"model.layers.{{i}}.attn.{name}_lora.lora."
    rules = [Rule(o + "1", h + "0.weight", TRANSPOSE, layers), Rule(o + "2", h + "2.weight", TRANSPOSE, layers)]
    if bias:
        rules.append(Rule(o + "0", h + "2.bias", VECTOR, layers))
    return rules


def _v7_rules() -> List[Rule]:
    o, h = "blocks.{i}.", "model.layers.{i}."
    rules = _rules(o, h, [(f"ln1.{p}", f"attn_norm.{p}") for p in ("weight", "bias")]
                   + [(f"ln2.{p}", f"ffn_norm.{p}") for p in ("weight", "bias")])
    rules += _rules(o + "att.", h + "attn.", [(f"{m}.weight", f"{p}_proj.weight")
                                              for m, p in (("receptance", "r"), ("key", "k"),
                                                           ("value", "v"), ("output", "o"))]
                    + [("ln_x.weight", "g_norm.weight"), ("ln_x.bias", "g_norm.bias"), ("r_k", "r_k")])
    rules += _rules(o + "att.", h + "attn.", [(f"x_{m}", f"x_{m}") for m in "rwkvag"], VECTOR3)
    rules += _rules(o + "att.", h + "attn.", [("k_k", "k_k"), ("k_a", "k_a")], VECTOR)
    rules += _v7_lora("w", "w", True) + _v7_lora("a", "a", True) + _v7_lora("g", "g", False)
    rules += _v7_lora("v", "v", True, "later")
    rules += _rules(o + "ffn.", h + "ffn.", [("key.weight", "key.weight"), ("value.weight", "value.weight")])
    rules += _rules(o + "ffn.", h + "ffn.", [("x_k", "x_k")], VECTOR)
    return rules


#: the per-layer rules of each version (the top-level ones: _top_rules).
LAYER_RULES = {"5.2": _v5_rules(), "6.0": _v6_rules(), "7.0": _v7_rules()}


def layout_rules(version: str, n_layer: int) -> List[Rule]:
    """Every rule of a model of ``n_layer`` layers, ``{i}`` filled in."""
    if version not in LAYER_RULES:
        raise ConvertError(f"RWKV-{version} has no Hugging Face layout here (5.2, 6.0 and 7.0 have)")
    rules = list(_top_rules(version))
    for i in range(n_layer):
        for r in LAYER_RULES[version]:
            if r.layers == "all" or (r.layers == "first") == (i == 0):
                rules.append(Rule(r.official.format(i=i), r.hf.format(i=i), r.kind, r.layers))
    return rules


# -- official -> Hugging Face --------------------------------------------------

def _hf_data(array: np.ndarray, kind: str) -> np.ndarray:
    if kind == TRANSPOSE:
        return np.ascontiguousarray(np.asarray(array).reshape(array.shape[-2:]).T)
    if kind == VECTOR:
        return np.asarray(array).reshape(-1)
    if kind == VECTOR3:
        return np.asarray(array).reshape(1, 1, -1)
    return np.asarray(array)


def official_to_hf(state_dict: Mapping[str, np.ndarray], version: str, n_layer: int) -> Dict[str, np.ndarray]:
    """The HF tensors of an official state dict (float arrays, official
    names).  Tensors the HF model lacks (RWKV-7 layer 0's unused
    ``v0``/``v1``/``v2``) are dropped; a missing one is an error."""
    out: Dict[str, np.ndarray] = {}
    for rule in layout_rules(version, n_layer):
        if rule.official not in state_dict:
            raise ConvertError(f"missing tensor '{rule.official}' (Hugging Face '{rule.hf}')")
        out[rule.hf] = _hf_data(state_dict[rule.official], rule.kind)
    return out


def hf_config(version: str, hp, rescale_every: int = DEFAULT_RESCALE_EVERY) -> dict:
    """config.json of the HF port of ``version``, from :class:`WkvParams`."""
    common = {"architectures": [HF_ARCHITECTURES[version]], "model_type": HF_MODEL_TYPES[version],
              "vocab_size": hp.n_vocab, "hidden_size": hp.n_embed, "num_hidden_layers": hp.n_layer,
              "intermediate_size": hp.n_ffn, "tie_word_embeddings": False,
              "bos_token_id": 0, "eos_token_id": 0, "use_cache": True}
    if version == "7.0":
        lora = dict(hp.lora)
        common.update({"head_dim": hp.head_size, "num_heads": hp.n_head,
                       "hidden_ratio": hp.n_ffn / hp.n_embed, "norm_eps": 1e-5, "norm_bias": True,
                       "norm_first": True, "fuse_norm": False, "hidden_act": "sqrelu", "attn_mode": "chunk",
                       "attn": None, "decay_low_rank_dim": lora["decay"], "a_low_rank_dim": lora["a"],
                       "v_low_rank_dim": lora["v"], "gate_low_rank_dim": lora["gate"],
                       "value_dim": [hp.n_embed] * hp.n_layer})
    else:
        common.update({"attention_hidden_size": hp.n_embed, "head_size": hp.head_size,
                       "head_size_divisor": 8, "num_attention_heads": hp.n_head,
                       "layer_norm_epsilon": 1e-5, "rescale_every": rescale_every})
    return common


def write_world_vocab(src: str, dst: str, n_vocab: int) -> None:
    """Copy the World vocabulary file, cut to the ``n_vocab - 1`` first
    tokens when the model's vocabulary is smaller (llama.cpp's converter
    adds ``<s>`` as token 0 and pads to n_vocab; it refuses more tokens
    than n_vocab)."""
    with open(src, "r", encoding="utf-8") as f:
        lines = f.readlines()
    with open(dst, "w", encoding="utf-8") as f:
        f.writelines(lines[:max(n_vocab - 1, 0)])


def write_hf_folder(state_dict: Mapping[str, np.ndarray], out_dir: str, world_vocab: str,
                    dtype: str = "F32", rescale_every: int = DEFAULT_RESCALE_EVERY) -> str:
    """Write an official RWKV-5.2/6.0/7.0 checkpoint as a Hugging Face folder.

    Args:
        state_dict: official names -> numpy arrays (as the converter and
            :mod:`.random_weights` use them).
        out_dir: the folder (created if needed): ``model.safetensors``,
            ``config.json`` and the World vocabulary file are written there.
        world_vocab: path of ``rwkv_vocab_v20230424.txt`` (the package's
            ``rwkv_cpp/data`` has it); cut to the model's vocabulary.
        dtype: ``'F32'``, ``'F16'`` or ``'BF16'`` for the safetensors file.
        rescale_every: RWKV-5/6 ``rescale_every`` recorded in config.json
            (the weights are written unscaled, as in the HF repositories).

    Returns:
        the detected version.

    Raises:
        ConvertError: not an RWKV-5.2/6.0/7.0 checkpoint, or a tensor missing.
    """
    shapes = {name: tuple(np.shape(a)) for name, a in state_dict.items()}
    version = detect_version(shapes)
    if version not in LAYER_RULES:
        raise ConvertError(f"RWKV-{version} has no Hugging Face port (5.2, 6.0 and 7.0 have)")
    hp = infer_wkv_params(version, shapes)
    check_wkv_tensors(shapes, hp)
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"),
                      official_to_hf(state_dict, version, hp.n_layer), dtype=dtype,
                      metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config(version, hp, rescale_every), f, indent=2)
    write_world_vocab(world_vocab, os.path.join(out_dir, WORLD_VOCAB_NAME), hp.n_vocab)
    return version


# -- Hugging Face -> official --------------------------------------------------

_HF_LAYER_RE = re.compile(r"^(?:rwkv\.blocks|model\.layers)\.([0-9]+)\.")


def hf_version(names) -> Optional[str]:
    """The version of a set of HF RWKV-5/6/7 tensor names; None when they
    are not one of these layouts (official names, HF RWKV-4 names)."""
    names = [strip_wrapper_prefixes(n) for n in names]
    if any(n.startswith("model.layers.") and ".attn." in n for n in names):
        return "7.0"
    if not any(n.startswith("rwkv.blocks.") and n.endswith(".attention.ln_x.weight") for n in names):
        return None  # the RWKV-4 port has no ln_x: keys.py maps its names
    return "6.0" if any(n.endswith(".attention.time_maa_x") for n in names) else "5.2"


def _layer_count(names) -> int:
    found = [int(m.group(1)) for m in map(_HF_LAYER_RE.match, names) if m and len(m.group(1)) < 7]
    return max(found) + 1 if found else 0


def _official_tensor(src: SourceTensor, name: str, kind: str) -> SourceTensor:
    """The official tensor of an HF one: renamed, and transposed if needed
    (lazily: the data is read when the converter asks for it)."""
    if kind != TRANSPOSE:
        return src.renamed(name)
    if len(src.shape) != 2:
        raise ConvertError(f"tensor '{src.name}': expected a 2-D LoRA matrix, found shape {src.shape}")
    return SourceTensor(name, src.shape[::-1], src.dtype,
                        lambda: np.ascontiguousarray(src.raw().T))


def hf_to_official(tensors: Mapping[str, SourceTensor]) -> Dict[str, SourceTensor]:
    """Official names and layouts for the tensors of an HF RWKV-5/6/7
    checkpoint; other checkpoints are returned unchanged.  Unknown names
    stay as they are (the model check reports them)."""
    version = hf_version(tensors)
    if version is None:
        return dict(tensors)
    stripped = {strip_wrapper_prefixes(n): t for n, t in tensors.items()}
    rules = layout_rules(version, _layer_count(stripped))
    if version == "7.0":  # layer 0's value LoRA: not in fla's model, kept by some files
        rules += [Rule(r.official.format(i=0), r.hf.format(i=0), r.kind) for r in _v7_lora("v", "v", True)]
    by_hf = {r.hf: r for r in rules}
    out: Dict[str, SourceTensor] = {}
    for name, src in stripped.items():
        rule = by_hf.get(name)
        official = rule.official if rule else name
        if official in out:
            raise ConvertError(f"two tensors map to '{official}'")
        out[official] = _official_tensor(src, official, rule.kind) if rule else src
    return out


# -- reading a folder ------------------------------------------------------------

def read_hf_config(folder: str) -> dict:
    """config.json of an HF folder ({} when there is none)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "r", encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: not a JSON object")
    return config


def _weight_files(folder: str) -> List[str]:
    """The safetensors files of a folder: the shards its index names, else
    every ``*.safetensors`` file (sorted)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, "r", encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConvertError(f"{index}: not a valid safetensors index ({exc})") from None
        for name in files:
            if os.path.basename(name) != name:
                raise ConvertError(f"{index}: shard name '{name}' is not a file of the folder")
        return [os.path.join(folder, n) for n in files]
    files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not files:
        raise ConvertError(f"{folder}: a folder without .safetensors files (a Hugging Face model "
                           "folder holds model.safetensors and config.json)")
    return [os.path.join(folder, n) for n in files]


def open_hf_folder(folder: str) -> Checkpoint:
    """Open a Hugging Face model folder (one or several safetensors files)
    as one checkpoint, its tensors under their HF names (the converter maps
    them with :func:`hf_to_official`)."""
    config = read_hf_config(folder)
    parts: List[Checkpoint] = []
    tensors: Dict[str, SourceTensor] = {}
    try:
        for path in _weight_files(folder):
            part = open_safetensors(path)
            parts.append(part)
            for name, t in part.tensors.items():
                if name in tensors:
                    raise ConvertError(f"{folder}: tensor '{name}' is in two files")
                tensors[name] = t
    except BaseException:
        for part in parts:
            part.close()
        raise

    def close() -> None:
        for part in parts:
            part.close()

    meta = {"hf_architectures": ",".join(map(str, config.get("architectures") or []))}
    return Checkpoint(folder, "hf_folder", tensors, meta, closer=close)
