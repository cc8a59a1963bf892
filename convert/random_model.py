"""Random RWKV-4 checkpoints with realistic magnitudes, for tests and demos.

``make_rwkv4_state_dict`` follows the official RWKV-4 initialisation of the
time parameters (RWKV-LM ``RWKV_TimeMix`` / ``RWKV_ChannelMix``), with some
noise added, and scales the matrices so that every path of the model matters:
the residual stream and the logits stay O(1), and the attention and FFN
outputs are of the same order as the embedding (a runtime that got either
wrong would produce visibly different logits).

Command line::

    python -m rwkv_cpp.convert.random_model OUT.safetensors --vocab 256 \\
        --embed 64 --layer 2 [--ffn 256] [--seed 0] [--dtype F32|BF16]
"""

from __future__ import annotations

import argparse
import math
from typing import Dict, Optional

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


def _matrix(rng: np.random.Generator, out_f: int, in_f: int, scale: float = 1.0):
    """N(0, scale^2 / in_features): unit-variance outputs for unit inputs."""
    return rng.normal(0.0, scale / math.sqrt(in_f), (out_f, in_f))


def make_rwkv4_state_dict(n_vocab: int, n_embed: int, n_layer: int,
                          n_ffn: Optional[int] = None, seed: int = 0,
                          n_att: Optional[int] = None) -> Dict[str, np.ndarray]:
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
    for i in range(n_layer):
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
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def save_safetensors(path: str, sd: Dict[str, np.ndarray], dtype: str = "F32") -> None:
    """Save a state dict as safetensors in ``'F32'`` or ``'BF16'`` (rounded
    to nearest even, as ``tensor.to(torch.bfloat16)``)."""
    if dtype not in ("F32", "BF16", "F16"):
        raise ValueError(f"dtype must be F32, F16 or BF16, got {dtype!r}")
    write_safetensors(path, sd, dtype=dtype)


def main(argv=None) -> int:
    """Command line: write a random RWKV-4 checkpoint as safetensors."""
    ap = argparse.ArgumentParser(
        prog="python -m rwkv_cpp.convert.random_model",
        description="Write a random RWKV-4 checkpoint (official tensor names) "
                    "as .safetensors, for tests and demos.")
    ap.add_argument("out", help="output .safetensors path")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=None, help="default 4 * embed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("F32", "BF16", "F16"), default="F32")
    args = ap.parse_args(argv)
    sd = make_rwkv4_state_dict(args.vocab, args.embed, args.layer, args.ffn, args.seed)
    save_safetensors(args.out, sd, args.dtype)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
