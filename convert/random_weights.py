"""Random RWKV checkpoints with realistic magnitudes, for tests and demos.

``make_rwkv4_state_dict`` follows the official RWKV-4 initialisation of the
time parameters (RWKV-LM ``RWKV_TimeMix`` / ``RWKV_ChannelMix``), with some
noise added, and scales the matrices so that every path of the model matters:
the residual stream and the logits stay O(1), and the attention and FFN
outputs are of the same order as the embedding (a runtime that got either
wrong would produce visibly different logits).  ``make_rwkv5_state_dict``,
``make_rwkv6_state_dict`` and ``make_rwkv7_state_dict`` do the same for the
later versions (RWKV-LM ``RWKV_Tmix_x052`` / ``x060`` / ``x070``), with
non-zero LoRAs (trained models have them; a zero LoRA would hide a wrong
one) and decays spread from slow to fast.

The command line ``python -m rwkv_cpp.convert.random_model`` writes one as
safetensors.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import numpy as np

from .safetensors import write_safetensors


def _time_params(rng: np.random.Generator, layer: int, n_layer: int,
                 D: int, A: int) -> Dict[str, np.ndarray]:
    """time_decay / time_first / time_mix_* of one layer."""
    r01 = layer / max(n_layer - 1, 1)          # 0 at the first layer, 1 at the last
    r10 = 1.0 - layer / n_layer                # 1 at the first layer, ~0 at the last
    h = np.arange(A) / max(A - 1, 1)
    # decay speed spread from -5 (slow) to 3 (fast) over the channels
    decay = -5.0 + 8.0 * h ** (0.7 + 1.3 * r01)
    zigzag = 0.5 * (((np.arange(A) + 1) % 3) - 1)
    first = math.log(0.3) + zigzag
    ramp = np.arange(D) / D

    def mix(power: float, shift: float = 0.0) -> np.ndarray:
        noisy = ramp ** power + shift + rng.normal(0.0, 0.05, D)
        return np.clip(noisy, 0.02, 0.98).reshape(1, 1, D)

    return {
        "att.time_decay": decay + rng.normal(0.0, 0.1, A),
        "att.time_first": first + rng.normal(0.0, 0.1, A),
        "att.time_mix_k": mix(r10),
        "att.time_mix_v": mix(r10, 0.3 * r01),
        "att.time_mix_r": mix(0.5 * r10),
        "ffn.time_mix_k": mix(r10),
        "ffn.time_mix_r": mix(r10),
    }


def _ln(rng: np.random.Generator, D: int):
    """LayerNorm weight ~ 1 +- 0.1, bias ~ +- 0.1."""
    return 1.0 + rng.uniform(-0.1, 0.1, D), rng.uniform(-0.1, 0.1, D)


#: progress(fraction done), called after each layer
ProgressFn = Callable[[float], None]


def _layers(n_layer: int, progress: Optional[ProgressFn]):
    """range(n_layer), calling ``progress(layers done / n_layer)`` after the
    body of each layer's loop (the generator resumes when the loop asks for
    the next layer)."""
    for i in range(n_layer):
        yield i
        if progress:
            progress((i + 1) / n_layer)


def _matrix(rng: np.random.Generator, out_f: int, in_f: int, scale: float = 1.0):
    """N(0, scale^2 / in_features): unit-variance outputs for unit inputs."""
    return rng.normal(0.0, scale / math.sqrt(in_f), (out_f, in_f))


def make_rwkv4_state_dict(n_vocab: int, n_embed: int, n_layer: int,
                          n_ffn: Optional[int] = None, seed: int = 0,
                          n_att: Optional[int] = None,
                          progress: Optional[ProgressFn] = None) -> Dict[str, np.ndarray]:
    """A random RWKV-4 state dict with official names, shapes and order.

    Args:
        n_vocab, n_embed, n_layer: model size.
        n_ffn: FFN width (default 4 * n_embed).
        seed: numpy random seed (the result is deterministic).
        n_att: attention width (default n_embed, as in every official model).

    Returns:
        dict name -> float32 array; time_mix_* are (1, 1, D), time_decay and
        time_first (A), matrices (out_features, in_features).
    """
    D, A = n_embed, n_att or n_embed
    F = n_ffn or 4 * n_embed
    rng = np.random.default_rng(seed)
    # Each of the 2 * n_layer residual branches adds variance ~ out_scale^2,
    # so the stream stays O(1) yet every branch is a sizeable contribution.
    out_scale = 1.0 / math.sqrt(max(n_layer, 1))
    sd: Dict[str, np.ndarray] = {"emb.weight": rng.normal(0.0, 1.0, (n_vocab, D))}
    sd["blocks.0.ln0.weight"], sd["blocks.0.ln0.bias"] = _ln(rng, D)
    for i in _layers(n_layer, progress):
        p = f"blocks.{i}."
        sd[p + "ln1.weight"], sd[p + "ln1.bias"] = _ln(rng, D)
        sd[p + "ln2.weight"], sd[p + "ln2.bias"] = _ln(rng, D)
        tp = _time_params(rng, i, n_layer, D, A)
        for key in ("att.time_decay", "att.time_first", "att.time_mix_k",
                    "att.time_mix_v", "att.time_mix_r"):
            sd[p + key] = tp[key]
        sd[p + "att.key.weight"] = _matrix(rng, A, D)
        sd[p + "att.value.weight"] = _matrix(rng, A, D)
        sd[p + "att.receptance.weight"] = _matrix(rng, A, D)
        sd[p + "att.output.weight"] = _matrix(rng, D, A, 2.0 * out_scale)
        sd[p + "ffn.time_mix_k"], sd[p + "ffn.time_mix_r"] = tp["ffn.time_mix_k"], tp["ffn.time_mix_r"]
        sd[p + "ffn.key.weight"] = _matrix(rng, F, D)
        sd[p + "ffn.receptance.weight"] = _matrix(rng, D, D)
        sd[p + "ffn.value.weight"] = _matrix(rng, D, F, 1.5 * out_scale)
    sd["ln_out.weight"], sd["ln_out.bias"] = _ln(rng, D)
    sd["head.weight"] = _matrix(rng, n_vocab, D, 2.0)
    return {k: np.ascontiguousarray(sd.pop(k), dtype=np.float32) for k in list(sd)}


# -- RWKV-5, 6, 7 ------------------------------------------------------------

def _ratios(layer: int, n_layer: int):
    """(0 -> 1 over the layers, 1 -> ~0 over the layers), as in RWKV-LM."""
    return layer / max(n_layer - 1, 1), 1.0 - layer / n_layer


def _mix_vector(rng: np.random.Generator, D: int, power: float, shift: float = 0.0) -> np.ndarray:
    """1 - (i / D) ** power (+ shift), with noise, in [0.02, 0.98], as (1, 1, D)."""
    ramp = np.arange(D) / D
    return np.clip(1.0 - ramp ** power - shift + rng.normal(0.0, 0.05, D), 0.02, 0.98).reshape(1, 1, D)


def _decay_speed(rng: np.random.Generator, n: int, layer: int, n_layer: int,
                 lo: float, hi: float) -> np.ndarray:
    """A decay exponent spread from lo (slow) to hi (fast) over n channels."""
    r01, _ = _ratios(layer, n_layer)
    h = np.arange(n) / max(n - 1, 1)
    return lo + (hi - lo) * h ** (0.7 + 1.3 * r01) + rng.normal(0.0, 0.1, n)


def _bonus(rng: np.random.Generator, H: int, N: int, layer: int, n_layer: int) -> np.ndarray:
    """time_faaaa (H, N): RWKV-LM's ramp with a zigzag, plus noise."""
    r01, _ = _ratios(layer, n_layer)
    n = np.arange(H * N)
    u = r01 * (1 - n / max(H * N - 1, 1)) + ((n + 1) % 3 - 1) * 0.1 + 0.3
    return (u + rng.normal(0.0, 0.1, H * N)).reshape(H, N)


def _embedding_and_output(rng: np.random.Generator, V: int, D: int) -> Dict[str, np.ndarray]:
    sd = {"emb.weight": rng.normal(0.0, 1.0, (V, D))}
    sd["blocks.0.ln0.weight"], sd["blocks.0.ln0.bias"] = _ln(rng, D)
    sd["ln_out.weight"], sd["ln_out.bias"] = _ln(rng, D)
    sd["head.weight"] = _matrix(rng, V, D, 2.0)
    return sd


def _finish(sd: Dict[str, np.ndarray], n_layer: int) -> Dict[str, np.ndarray]:
    """float32, in the official order: emb, the blocks, ln_out, head."""
    order = ["emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"]
    order += [k for k in sd if k.startswith("blocks.") and k not in order]
    order += ["ln_out.weight", "ln_out.bias", "head.weight"]
    return {k: np.ascontiguousarray(sd.pop(k), dtype=np.float32) for k in order}


def _attention_matrices(rng, p: str, D: int, out_scale: float, gate: bool) -> Dict[str, np.ndarray]:
    sd = {p + "att.receptance.weight": _matrix(rng, D, D), p + "att.key.weight": _matrix(rng, D, D),
          p + "att.value.weight": _matrix(rng, D, D),
          p + "att.output.weight": _matrix(rng, D, D, 2.0 * out_scale)}
    if gate:
        sd[p + "att.gate.weight"] = _matrix(rng, D, D)
    sd[p + "ln1.weight"], sd[p + "ln1.bias"] = _ln(rng, D)
    sd[p + "ln2.weight"], sd[p + "ln2.bias"] = _ln(rng, D)
    sd[p + "att.ln_x.weight"], sd[p + "att.ln_x.bias"] = _ln(rng, D)
    return sd


def _ffn(rng, p: str, D: int, F: int, out_scale: float, mix: Optional[str]) -> Dict[str, np.ndarray]:
    """Channel mixing; ``mix`` is the prefix of its two mix vectors (None: v7)."""
    sd = {p + "ffn.key.weight": _matrix(rng, F, D), p + "ffn.value.weight": _matrix(rng, D, F, 1.5 * out_scale)}
    if mix is None:
        sd[p + "ffn.x_k"] = _mix_vector(rng, D, 0.5)
    else:
        sd[p + f"ffn.{mix}k"], sd[p + f"ffn.{mix}r"] = _mix_vector(rng, D, 0.8), _mix_vector(rng, D, 0.8)
        sd[p + "ffn.receptance.weight"] = _matrix(rng, D, D)
    return sd


def _default_ffn(D: int, version: str) -> int:
    """The official FFN width: 4D (v7) or 3.5D rounded down to 32 (v5, v6)."""
    return 4 * D if version == "7.0" else max(32, int(D * 3.5) // 32 * 32)


def _heads(D: int, head_size: int):
    if head_size <= 0 or D % head_size != 0:
        raise ValueError(f"head_size {head_size} does not divide n_embed {D}")
    return D // head_size, head_size


def make_rwkv5_state_dict(n_vocab: int, n_embed: int, n_layer: int, head_size: int = 64,
                          version: str = "5.2", n_ffn: Optional[int] = None,
                          seed: int = 0,
                          progress: Optional[ProgressFn] = None) -> Dict[str, np.ndarray]:
    """A random RWKV-5.x state dict with official names and shapes.

    5.2: per-channel ``time_decay`` and ``time_faaaa`` (H, N).  5.1: per-head
    ``time_decay`` (H) and ``time_faaaa`` (H) (the bonus itself), and a gate.
    5.0: per-head ``time_decay`` and ``time_first`` (H) (the log of the bonus),
    no gate.
    """
    if version not in ("5.0", "5.1", "5.2"):
        raise ValueError(f"not an RWKV-5 version: {version!r}")
    D, F = n_embed, n_ffn or _default_ffn(n_embed, version)
    H, N = _heads(D, head_size)
    rng = np.random.default_rng(seed)
    out_scale = 1.0 / math.sqrt(max(n_layer, 1))
    sd = _embedding_and_output(rng, n_vocab, D)
    for i in _layers(n_layer, progress):
        p, (r01, r10) = f"blocks.{i}.", _ratios(i, n_layer)
        sd.update(_attention_matrices(rng, p, D, out_scale, version != "5.0"))
        for m, power, shift in (("k", r10, 0.0), ("v", r10, 0.3 * r01), ("r", 0.5 * r10, 0.0),
                                ("g", 0.5 * r10, 0.0))[:4 if version != "5.0" else 3]:
            sd[p + "att.time_mix_" + m] = _mix_vector(rng, D, power, shift)
        if version == "5.2":
            sd[p + "att.time_decay"] = _decay_speed(rng, D, i, n_layer, -6.0, -1.0).reshape(H, N)
            sd[p + "att.time_faaaa"] = _bonus(rng, H, N, i, n_layer)
        else:
            sd[p + "att.time_decay"] = _decay_speed(rng, H, i, n_layer, -6.0, -1.0)
            bonus = _bonus(rng, H, 1, i, n_layer).reshape(H)
            if version == "5.1":
                sd[p + "att.time_faaaa"] = bonus
            else:
                sd[p + "att.time_first"] = np.log(np.abs(bonus) + 0.05)
        sd.update(_ffn(rng, p, D, F, out_scale, "time_mix_"))
    return _finish(sd, n_layer)


def make_rwkv6_state_dict(n_vocab: int, n_embed: int, n_layer: int, head_size: int = 64,
                          n_ffn: Optional[int] = None, seed: int = 0, mix_lora: int = 32,
                          decay_lora: int = 64,
                          progress: Optional[ProgressFn] = None) -> Dict[str, np.ndarray]:
    """A random RWKV-6.0 state dict with official names and shapes
    (time_maa_w1 (D, 5 mix_lora), time_maa_w2 (5, mix_lora, D),
    time_decay (1, 1, D), time_decay_w1 (D, decay_lora), ...)."""
    D, F = n_embed, n_ffn or _default_ffn(n_embed, "6.0")
    H, N = _heads(D, head_size)
    rng = np.random.default_rng(seed)
    out_scale = 1.0 / math.sqrt(max(n_layer, 1))
    sd = _embedding_and_output(rng, n_vocab, D)
    for i in _layers(n_layer, progress):
        p, (r01, r10) = f"blocks.{i}.", _ratios(i, n_layer)
        sd.update(_attention_matrices(rng, p, D, out_scale, True))
        for m, power, shift in (("x", r10, 0.0), ("w", r10, 0.0), ("k", r10, 0.0), ("v", r10, 0.3 * r01),
                                ("r", 0.5 * r10, 0.0), ("g", 0.5 * r10, 0.0)):
            sd[p + "att.time_maa_" + m] = _mix_vector(rng, D, power, shift)
        # LoRA outputs: mix shifts of ~0.2, decay exponent shifts of ~0.5
        sd[p + "att.time_maa_w1"] = rng.normal(0.0, 1.0 / math.sqrt(D), (D, 5 * mix_lora))
        sd[p + "att.time_maa_w2"] = rng.normal(0.0, 0.3 / math.sqrt(mix_lora), (5, mix_lora, D))
        sd[p + "att.time_decay"] = _decay_speed(rng, D, i, n_layer, -6.0, -1.0).reshape(1, 1, D)
        sd[p + "att.time_decay_w1"] = rng.normal(0.0, 1.0 / math.sqrt(D), (D, decay_lora))
        sd[p + "att.time_decay_w2"] = rng.normal(0.0, 0.8 / math.sqrt(decay_lora), (decay_lora, D))
        sd[p + "att.time_faaaa"] = _bonus(rng, H, N, i, n_layer)
        sd.update(_ffn(rng, p, D, F, out_scale, "time_maa_"))
    return _finish(sd, n_layer)


def default_v7_lora(n_embed: int) -> Dict[str, int]:
    """RWKV-LM x070's suggested LoRA ranks for a width (multiples of 32)."""
    def rank(factor: float, power: float) -> int:
        return max(32, int(round(factor * n_embed ** power / 32)) * 32)
    return {"decay": rank(1.8, 0.5), "a": rank(1.8, 0.5), "v": rank(1.3, 0.5), "gate": rank(0.6, 0.8)}


def make_rwkv7_state_dict(n_vocab: int, n_embed: int, n_layer: int, head_size: int = 64,
                          n_ffn: Optional[int] = None, seed: int = 0,
                          lora: Optional[Dict[str, int]] = None,
                          layer0_value_lora: bool = True,
                          progress: Optional[ProgressFn] = None) -> Dict[str, np.ndarray]:
    """A random RWKV-7.0 state dict with official names and shapes.

    lora: ranks {"decay", "a", "v", "gate"} (default: default_v7_lora).
    layer0_value_lora: give layer 0 v0/v1/v2 too (some official checkpoints
    have them; the official code ignores them).
    """
    D, F = n_embed, n_ffn or _default_ffn(n_embed, "7.0")
    H, N = _heads(D, head_size)
    ranks = dict(default_v7_lora(D), **(lora or {}))
    rng = np.random.default_rng(seed)
    out_scale = 1.0 / math.sqrt(max(n_layer, 1))
    sd = _embedding_and_output(rng, n_vocab, D)

    def lora_pair(p: str, short: str, rank: int, scale: float) -> None:
        sd[p + f"att.{short}1"] = rng.normal(0.0, 1.0 / math.sqrt(D), (D, rank))
        sd[p + f"att.{short}2"] = rng.normal(0.0, scale / math.sqrt(rank), (rank, D))

    for i in _layers(n_layer, progress):
        p, (r01, r10) = f"blocks.{i}.", _ratios(i, n_layer)
        sd.update(_attention_matrices(rng, p, D, out_scale, False))
        for m, power in (("r", 0.2), ("w", 0.9), ("k", 0.7), ("v", 0.7), ("a", 0.9), ("g", 0.2)):
            sd[p + "att.x_" + m] = _mix_vector(rng, D, power * r10 + 0.05)
        # w0 spread so that w = exp(-0.606531 * sigmoid(w0 + .)) covers (0.6, 1)
        sd[p + "att.w0"] = _decay_speed(rng, D, i, n_layer, -6.0, 1.0).reshape(1, 1, D)
        lora_pair(p, "w", ranks["decay"], 1.0)
        sd[p + "att.a0"] = rng.normal(0.0, 0.5, (1, 1, D))
        lora_pair(p, "a", ranks["a"], 1.0)
        if i > 0 or layer0_value_lora:
            sd[p + "att.v0"] = rng.normal(0.5, 0.5, (1, 1, D))
            lora_pair(p, "v", ranks["v"], 1.0)
        lora_pair(p, "g", ranks["gate"], 1.0)
        sd[p + "att.k_k"] = rng.normal(0.85, 0.1, (1, 1, D))
        sd[p + "att.k_a"] = rng.uniform(0.5, 1.5, (1, 1, D))
        sd[p + "att.r_k"] = rng.normal(0.0, 0.1, (H, N))
        sd.update(_ffn(rng, p, D, F, out_scale, None))
    return _finish(sd, n_layer)


def make_state_dict(version: str, n_vocab: int, n_embed: int, n_layer: int, head_size: int = 64,
                    n_ffn: Optional[int] = None, seed: int = 0,
                    progress: Optional[ProgressFn] = None) -> Dict[str, np.ndarray]:
    """A random state dict of any version ('4', '5.0' ... '7.0');
    ``progress(fraction of the layers done)`` after each layer."""
    if version == "4":
        return make_rwkv4_state_dict(n_vocab, n_embed, n_layer, n_ffn, seed, progress=progress)
    if version.startswith("5"):
        return make_rwkv5_state_dict(n_vocab, n_embed, n_layer, head_size, version, n_ffn, seed, progress=progress)
    if version == "6.0":
        return make_rwkv6_state_dict(n_vocab, n_embed, n_layer, head_size, n_ffn, seed, progress=progress)
    if version == "7.0":
        return make_rwkv7_state_dict(n_vocab, n_embed, n_layer, head_size, n_ffn, seed, progress=progress)
    raise ValueError(f"unknown RWKV version {version!r}")


def save_safetensors(path: str, sd: Dict[str, np.ndarray], dtype: str = "F32", progress=None) -> None:
    """Save a state dict as safetensors in ``'F32'`` or ``'BF16'`` (rounded
    to nearest even, as ``tensor.to(torch.bfloat16)``), atomically;
    ``progress(done_bytes, total_bytes, name)`` after each tensor."""
    if dtype not in ("F32", "BF16", "F16"):
        raise ValueError(f"dtype must be F32, F16 or BF16, got {dtype!r}")
    write_safetensors(path, sd, dtype=dtype, progress=progress)
