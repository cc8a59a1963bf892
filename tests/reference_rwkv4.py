"""A readable float64 numpy reference of the RWKV-4 language model.

It follows the maths of the official implementation (the PyPI package
``rwkv``, ``rwkv/model.py``: ``att_one``, ``ffn_one``, ``forward``) one block
per function, in float64, from the official PyTorch state dict (a mapping of
the official key names to float arrays).  It is a test oracle, not a fast
implementation: the WKV recurrence is evaluated channel by channel with the
scalar function ``wkv_step_ref``.

State layout (the official one): for layer i, five vectors

    [5i + 0] att x_prev  (n_embed)  ln1 output of the previous token
    [5i + 1] aa          (n_att)    WKV numerator,   scaled by exp(-pp)
    [5i + 2] bb          (n_att)    WKV denominator, scaled by exp(-pp)
    [5i + 3] pp          (n_att)    the running maximum exponent
    [5i + 4] ffn x_prev  (n_embed)  ln2 output of the previous token

concatenated layer after layer into one flat vector.  The initial state is
zero except pp = -1e30 (an exponent so small that exp(pp - p) is 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

LAYER_NORM_EPS = 1e-5  # torch.nn.functional.layer_norm default, used everywhere in v4
INITIAL_PP = -1e30  # "minus infinity" of the max-exponent state, as in the official code
STATE_VECTORS_PER_LAYER = 5

# Index of each vector inside one layer's five.
ATT_X_PREV, ATT_AA, ATT_BB, ATT_PP, FFN_X_PREV = range(STATE_VECTORS_PER_LAYER)


# ---------------------------------------------------------------------------
# Hyper-parameters and state layout
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rwkv4Shape:
    n_vocab: int
    n_embed: int
    n_layer: int
    n_att: int
    n_ffn: int

    @property
    def state_len(self) -> int:
        return self.n_layer * (3 * self.n_att + 2 * self.n_embed)


def shape_of(weights: Mapping[str, np.ndarray]) -> Rwkv4Shape:
    """Hyper-parameters from the tensor shapes, as the official loader reads them."""
    n_vocab, n_embed = weights["emb.weight"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    n_att = weights["blocks.0.att.key.weight"].shape[0]
    n_ffn = weights["blocks.0.ffn.key.weight"].shape[0]
    return Rwkv4Shape(n_vocab, n_embed, n_layer, n_att, n_ffn)


def state_offsets(shape: Rwkv4Shape, layer: int) -> list[slice]:
    """The five slices of layer ``layer`` inside the flat state, in official order."""
    sizes = [shape.n_embed, shape.n_att, shape.n_att, shape.n_att, shape.n_embed]
    start = layer * sum(sizes)
    slices = []
    for size in sizes:
        slices.append(slice(start, start + size))
        start += size
    return slices


def initial_state(shape: Rwkv4Shape) -> np.ndarray:
    state = np.zeros(shape.state_len, dtype=np.float64)
    for layer in range(shape.n_layer):
        state[state_offsets(shape, layer)[ATT_PP]] = INITIAL_PP
    return state


# ---------------------------------------------------------------------------
# Elementary functions
# ---------------------------------------------------------------------------


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    # F.layer_norm: (x - mean) / sqrt(var + eps) * w + b, biased variance
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * weight + bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def token_shift(x: np.ndarray, x_prev: np.ndarray, mix: np.ndarray) -> np.ndarray:
    # RWKV-4/5 interpolation between this token and the previous one:
    # x * mu + prev * (1 - mu)
    return x * mix + x_prev * (1.0 - mix)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """Rounds float64 values to the nearest bfloat16 (ties to even), in float64.

    bfloat16 keeps 8 significant bits.  With x = m * 2**e, 0.5 <= |m| < 1,
    the representable neighbours are multiples of 2**(e - 8); np.rint rounds
    half to even.  (Normal range only; bf16 subnormals do not occur here.)
    """
    mantissa, exponent = np.frexp(np.asarray(x, dtype=np.float64))
    return np.ldexp(np.rint(mantissa * 256.0), exponent - 8)


def round_via_float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """The bf16 value of a float32 result: x rounded to float32, then to bf16.

    This is how the official loader's ln0(emb) of a bf16 checkpoint is
    produced (torch computes the layer norm in float32 and rounds the
    float32 result to bf16).  The double rounding matters: an exact value
    within half a float32 ulp of a bf16 midpoint becomes the midpoint and
    then rounds to even.
    """
    return round_to_bf16(np.asarray(x, dtype=np.float64).astype(np.float32))


# ---------------------------------------------------------------------------
# The WKV recurrence
# ---------------------------------------------------------------------------


def wkv_step_ref(
    k: float, v: float, aa: float, bb: float, pp: float, w: float, u: float
) -> tuple[float, float, float, float]:
    """One step of the RWKV-4 WKV recurrence for one channel, scalar float64.

    Mathematically, with a_t = sum_{i<t} exp(w*(t-1-i) + k_i) v_i and b_t the
    same sum without v_i,
        wkv_t = (a_t + exp(u + k_t) v_t) / (b_t + exp(u + k_t))
        a_{t+1} = exp(w) a_t + exp(k_t) v_t,   b_{t+1} = exp(w) b_t + exp(k_t).
    The state keeps aa = a * exp(-pp), bb = b * exp(-pp) with pp the largest
    exponent seen so far, so that no exp() ever overflows (k can be large).

    w is the per-token log decay, -exp(time_decay) (< 0); u is time_first.
    Returns (wkv, aa', bb', pp').
    """
    # Output: mix the stored sums with the current token weighted by exp(u + k).
    ww = u + k
    p = max(pp, ww)
    e1 = math.exp(pp - p)
    e2 = math.exp(ww - p)
    wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
    # State update: decay the stored sums by exp(w), add exp(k) * v.
    ww = w + pp
    p = max(ww, k)
    e1 = math.exp(ww - p)
    e2 = math.exp(k - p)
    return wkv, e1 * aa + e2 * v, e1 * bb + e2, p


def wkv_sequence_direct(
    ks: np.ndarray, vs: np.ndarray, w: float, u: float
) -> np.ndarray:
    """The WKV outputs of one channel for a whole sequence, summed directly.

    No max-exponent trick: only valid for short sequences of moderate k
    (used to check ``wkv_step_ref``).  wkv_t is

        sum_{i<t} exp((t-1-i) w + k_i) v_i + exp(u + k_t) v_t
        -----------------------------------------------------
        sum_{i<t} exp((t-1-i) w + k_i)     + exp(u + k_t)
    """
    out = np.empty(len(ks), dtype=np.float64)
    for t in range(len(ks)):
        past = np.arange(t)
        weights = np.exp((t - 1 - past) * w + ks[:t])
        now = math.exp(u + ks[t])
        out[t] = (np.sum(weights * vs[:t]) + now * vs[t]) / (np.sum(weights) + now)
    return out


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------


def time_mixing(
    x: np.ndarray, state: list[np.ndarray], p: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Attention block of layer with parameters ``p`` (keys without 'blocks.N.').

    Returns the residual-stream output and the new
    [att x_prev, aa, bb, pp].  PyTorch equivalent (official att_one):
        xx = ln1(x); kx, vx, rx = token shifts of xx with time_mix_k/v/r
        r = sigmoid(Wr rx); k = Wk kx; v = Wv vx
        out = x + Wo (r * wkv(k, v))
    """
    x_prev, aa, bb, pp = state
    xx = layer_norm(x, p["ln1.weight"], p["ln1.bias"])
    kx = token_shift(xx, x_prev, p["att.time_mix_k"])
    vx = token_shift(xx, x_prev, p["att.time_mix_v"])
    rx = token_shift(xx, x_prev, p["att.time_mix_r"])
    r = sigmoid(p["att.receptance.weight"] @ rx)
    k = p["att.key.weight"] @ kx
    v = p["att.value.weight"] @ vx

    w = -np.exp(p["att.time_decay"])  # the official code stores -exp(time_decay)
    u = p["att.time_first"]
    wkv = np.empty_like(k)
    new_aa, new_bb, new_pp = np.empty_like(aa), np.empty_like(bb), np.empty_like(pp)
    for c in range(len(k)):
        wkv[c], new_aa[c], new_bb[c], new_pp[c] = wkv_step_ref(
            k[c], v[c], aa[c], bb[c], pp[c], w[c], u[c]
        )
    out = p["att.output.weight"] @ (r * wkv)
    return x + out, [xx, new_aa, new_bb, new_pp]


def channel_mixing(
    x: np.ndarray, x_prev: np.ndarray, p: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Feed-forward block.  Returns the output and the new ffn x_prev.

    PyTorch equivalent (official ffn_one):
        xx = ln2(x); kx, rx = token shifts of xx with time_mix_k/r
        out = x + sigmoid(Wr rx) * (Wv relu(Wk kx)^2)
    """
    xx = layer_norm(x, p["ln2.weight"], p["ln2.bias"])
    kx = token_shift(xx, x_prev, p["ffn.time_mix_k"])
    rx = token_shift(xx, x_prev, p["ffn.time_mix_r"])
    r = sigmoid(p["ffn.receptance.weight"] @ rx)
    hidden = np.maximum(p["ffn.key.weight"] @ kx, 0.0) ** 2
    return x + r * (p["ffn.value.weight"] @ hidden), xx


def head(x: np.ndarray, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    # logits = head @ ln_out(x)
    xx = layer_norm(x, weights["ln_out.weight"], weights["ln_out.bias"])
    return weights["head.weight"] @ xx


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class Rwkv4Reference:
    """RWKV-4 evaluated in float64 from an official state dict.

    ``embedding_round``: optional function applied to the ln0 output of the
    embedding row.  The official package applies ln0 at load time in the
    checkpoint's dtype, so for a bf16 checkpoint pass
    ``round_via_float32_to_bf16`` to reproduce it (see OFFICIAL_NOTES.md).
    """

    def __init__(
        self,
        state_dict: Mapping[str, np.ndarray],
        embedding_round: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    ):
        self.weights = {
            key: np.asarray(value, dtype=np.float64).squeeze()
            if ".time_" in key
            else np.asarray(value, dtype=np.float64)
            for key, value in state_dict.items()
        }
        self.shape = shape_of(self.weights)
        self.embedding_round = embedding_round
        self.layers = [self._layer_params(i) for i in range(self.shape.n_layer)]

    def _layer_params(self, layer: int) -> dict[str, np.ndarray]:
        prefix = f"blocks.{layer}."
        return {
            key[len(prefix):]: value
            for key, value in self.weights.items()
            if key.startswith(prefix)
        }

    def initial_state(self) -> np.ndarray:
        return initial_state(self.shape)

    def embed(self, token: int) -> np.ndarray:
        # ln0 (layer 0 only) on the embedding row
        x = layer_norm(
            self.weights["emb.weight"][token],
            self.weights["blocks.0.ln0.weight"],
            self.weights["blocks.0.ln0.bias"],
        )
        return self.embedding_round(x) if self.embedding_round else x

    def eval(
        self, token: int, state: Optional[np.ndarray] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits (n_vocab,) and the new flat state after one token.

        The input state is not modified.
        """
        if not 0 <= token < self.shape.n_vocab:
            raise ValueError(f"token {token} out of range [0, {self.shape.n_vocab})")
        state = self.initial_state() if state is None else np.array(state, np.float64)
        x = self.embed(token)
        for layer, params in enumerate(self.layers):
            parts = state_offsets(self.shape, layer)
            att_state = [state[parts[i]] for i in (ATT_X_PREV, ATT_AA, ATT_BB, ATT_PP)]
            x, new_att = time_mixing(x, att_state, params)
            x, new_ffn_prev = channel_mixing(x, state[parts[FFN_X_PREV]], params)
            for i, value in zip((ATT_X_PREV, ATT_AA, ATT_BB, ATT_PP), new_att):
                state[parts[i]] = value
            state[parts[FFN_X_PREV]] = new_ffn_prev
        return head(x, self.weights), state

    def eval_tokens(
        self, tokens, state: Optional[np.ndarray] = None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Feeds tokens one at a time; returns every step's logits and the final state."""
        all_logits = []
        for token in tokens:
            logits, state = self.eval(int(token), state)
            all_logits.append(logits)
        return all_logits, state


# ---------------------------------------------------------------------------
# Comparison helpers (max-abs, never signed sums)
# ---------------------------------------------------------------------------


def max_abs_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))


def relative_aware_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max(1, |expected|): absolute for values below 1,
    relative above (aa and bb grow with the sequence length)."""
    expected = np.asarray(expected, np.float64)
    diff = np.abs(np.asarray(actual, np.float64) - expected)
    return float(np.max(diff / np.maximum(1.0, np.abs(expected))))


def state_errors(shape: Rwkv4Shape, actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """Errors of each kind of state vector over all layers.

    x_prev (ln outputs, O(1)) and pp (an exponent) by max-abs; aa and bb by
    the relative-aware measure.
    """
    parts: dict[str, list[slice]] = {"x_prev": [], "aa": [], "bb": [], "pp": []}
    for layer in range(shape.n_layer):
        s = state_offsets(shape, layer)
        parts["x_prev"] += [s[ATT_X_PREV], s[FFN_X_PREV]]
        parts["aa"].append(s[ATT_AA])
        parts["bb"].append(s[ATT_BB])
        parts["pp"].append(s[ATT_PP])
    measure = {"x_prev": max_abs_error, "aa": relative_aware_error,
               "bb": relative_aware_error, "pp": max_abs_error}
    return {
        kind: measure[kind](
            np.concatenate([actual[s] for s in slices]),
            np.concatenate([expected[s] for s in slices]),
        )
        for kind, slices in parts.items()
    }
