"""Tuned initial states (RWKV-5/6/7 "state tuning"): the ``time_state``
tensors of a checkpoint.

A state-tuned checkpoint (alone, or inside a full model checkpoint) holds,
per layer, ``blocks.N.att.time_state`` of shape (H, N, N): the WKV matrices
the model starts from, in the layout of the training kernels, [head][value
i][key j].  Our state (docs/FORMAT.md) keeps the official inference layout:
v5/v6 [key][value] (the official loader takes ``time_state.transpose(1, 2)``)
and v7 [value][key] (the official RWKV-7 state, as tuned).  The converter
stores them, in our layout, as the optional tensors
``blocks.N.att.time_state`` of the model file (all layers or none), which
``rwkv_state_init`` returns as the initial state; the package builds a state
from them for ``--initial-state``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Tuple

import numpy as np

from .errors import ConvertError
from .gguf_constants import GGMLType
from .tensors import SourceTensor
from .transforms import OutTensor

_TIME_STATE = re.compile(r"^blocks\.([0-9]+)\.att\.time_state$")


def split_time_state(tensors: Mapping[str, SourceTensor]) -> Tuple[Dict[str, SourceTensor], Dict[int, SourceTensor]]:
    """(the other tensors, {layer: time_state}) of a checkpoint's tensors
    (official names)."""
    rest, states = {}, {}
    for name, t in tensors.items():
        m = _TIME_STATE.match(name)
        if m:
            states[int(m.group(1))] = t
        else:
            rest[name] = t
    return rest, states


def check_time_state(states: Mapping[int, SourceTensor], version: str, n_layer: int, n_head: int,
                     head_size: int, where: str = "the checkpoint") -> None:
    """Every layer's time_state is there, (H, N, N), for an RWKV-5/6/7 model."""
    if version == "4":
        raise ConvertError(f"{where}: time_state tensors (state tuning) are for RWKV-5/6/7, "
                           "not for an RWKV-4 model")
    missing = [i for i in range(n_layer) if i not in states]
    extra = sorted(i for i in states if i >= n_layer)
    if missing or extra:
        raise ConvertError(f"{where}: the tuned state needs blocks.N.att.time_state for each of the model's "
                           f"{n_layer} layers; missing layers {missing}, extra layers {extra}")
    want = (n_head, head_size, head_size)
    for i in range(n_layer):
        if states[i].shape != want:
            raise ConvertError(f"{where}: 'blocks.{i}.att.time_state' has shape {states[i].shape}, "
                               f"the model's state needs {want} (n_head, head_size, head_size)")


def wkv_matrices(version: str, time_state: np.ndarray) -> np.ndarray:
    """A layer's time_state (H, N, N) in our state layout, float32."""
    data = np.asarray(time_state, dtype=np.float32)
    if version.startswith("5") or version == "6.0":
        data = data.transpose(0, 2, 1)  # [value][key] -> [key][value]
    return np.ascontiguousarray(data)


def plan_time_state(states: Mapping[int, SourceTensor], version: str) -> List[OutTensor]:
    """The optional model-file tensors of the tuned state, after the rest."""
    plan = []
    for i in sorted(states):
        src = states[i]
        plan.append(OutTensor(f"blocks.{i}.att.time_state", src.shape, GGMLType.F32,
                              lambda s=src: wkv_matrices(version, s.to_f32())))
    return plan
