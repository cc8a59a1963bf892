"""Normalise checkpoint tensor names to the official BlinkDL names.

Official names (``emb.weight``, ``blocks.N.att.time_mix_k``, ...) pass
through.  Hugging Face ``transformers`` RWKV-4 names (``rwkv.blocks.N.
attention.time_mix_key``, ...) are mapped to them, and the wrapper prefixes
``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) are removed.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable

from .errors import ConvertError

#: prefixes added by training wrappers; removed (repeatedly) from every name.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: Hugging Face RWKV-4 sub-names inside a block -> official sub-names.
_HF_BLOCK_NAMES = {
    "pre_ln.weight": "ln0.weight",
    "pre_ln.bias": "ln0.bias",
    "ln1.weight": "ln1.weight",
    "ln1.bias": "ln1.bias",
    "ln2.weight": "ln2.weight",
    "ln2.bias": "ln2.bias",
    "attention.time_decay": "att.time_decay",
    "attention.time_first": "att.time_first",
    "attention.time_mix_key": "att.time_mix_k",
    "attention.time_mix_value": "att.time_mix_v",
    "attention.time_mix_receptance": "att.time_mix_r",
    "attention.key.weight": "att.key.weight",
    "attention.value.weight": "att.value.weight",
    "attention.receptance.weight": "att.receptance.weight",
    "attention.output.weight": "att.output.weight",
    "feed_forward.time_mix_key": "ffn.time_mix_k",
    "feed_forward.time_mix_receptance": "ffn.time_mix_r",
    "feed_forward.key.weight": "ffn.key.weight",
    "feed_forward.value.weight": "ffn.value.weight",
    "feed_forward.receptance.weight": "ffn.receptance.weight",
}

_HF_TOP_NAMES = {
    "rwkv.embeddings.weight": "emb.weight",
    "rwkv.ln_out.weight": "ln_out.weight",
    "rwkv.ln_out.bias": "ln_out.bias",
    "head.weight": "head.weight",
}

_HF_BLOCK_RE = re.compile(r"^rwkv\.blocks\.([0-9]+)\.(.+)$")


def strip_wrapper_prefixes(name: str) -> str:
    """Remove any leading ``module.`` / ``_orig_mod.`` prefixes."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def normalize_name(name: str) -> str:
    """The official name of one checkpoint tensor name.

    Names that are neither official nor known Hugging Face names are returned
    unchanged (after prefix stripping); the model check reports them.
    """
    name = strip_wrapper_prefixes(name)
    if name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[name]
    m = _HF_BLOCK_RE.match(name)
    if m and m.group(2) in _HF_BLOCK_NAMES:
        # the index without leading zeros, as int() would print it (without
        # int(), which refuses numbers of thousands of digits)
        return f"blocks.{m.group(1).lstrip('0') or '0'}.{_HF_BLOCK_NAMES[m.group(2)]}"
    return name


def normalize_names(names: Iterable[str]) -> Dict[str, str]:
    """Map every source name to its official name, in source order.

    Raises:
        ConvertError: two source names map to the same official name.
    """
    mapping: Dict[str, str] = {}
    seen: Dict[str, str] = {}
    for name in names:
        official = normalize_name(name)
        if official in seen:
            raise ConvertError(f"tensors '{seen[official]}' and '{name}' both map "
                               f"to '{official}'")
        seen[official] = name
        mapping[name] = official
    return mapping


def normalize_tensors(tensors: Dict[str, object]) -> Dict[str, object]:
    """Rename a dict of SourceTensors to official names (order kept)."""
    mapping = normalize_names(tensors)
    return {mapping[k]: t.renamed(mapping[k]) for k, t in tensors.items()}
