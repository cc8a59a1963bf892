"""A readable float64 numpy reference of RWKV-5.0/5.1/5.2, 6.0 and 7.0.

Each model follows the maths of the official implementation (PyPI ``rwkv``
0.8.32, ``rwkv/model.py``: ``att_one_v5`` / ``att_one_v5_1`` /
``att_one_v6_0`` / ``ffn_one`` / ``ffn_one_v6`` of class ``RWKV``, and
``RWKV_x070_TMix_one`` / ``RWKV_x070_CMix_one`` of class ``RWKV_x070``), one
block per function, in float64, from the official PyTorch state dict (the
official key names and shapes).  It is a test oracle, not a fast
implementation: the WKV recurrences are written per head with explicit
outer products, as in the equations.

State layout (the official one), per layer i, concatenated layer after layer:

    att x_prev   (D)          ln1 output of the previous token
    wkv state    (H, N, N)    v5/v6: S[h, key, value]; v7: S[h, value, key]
    ffn x_prev   (D)          ln2 output of the previous token

The initial state is all zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

LAYER_NORM_EPS = 1e-5
LN_X_EPS = 64e-5  # F.group_norm(..., eps=64e-5) in every official v5/v6/v7 path
V7_DECAY_SCALE = 0.606531  # written so in rwkv/model.py (~ exp(-0.5))
L2_NORM_EPS = 1e-12  # F.normalize


@dataclass(frozen=True)
class WkvShape:
    version: str
    n_vocab: int
    n_embed: int
    n_layer: int
    n_head: int
    head_size: int

    @property
    def layer_len(self) -> int:
        return 2 * self.n_embed + self.n_head * self.head_size ** 2

    @property
    def state_len(self) -> int:
        return self.n_layer * self.layer_len

    def slices(self, layer: int):
        """(att x_prev, wkv state, ffn x_prev) slices of a layer in the flat state."""
        D, S = self.n_embed, self.n_head * self.head_size ** 2
        start = layer * self.layer_len
        return slice(start, start + D), slice(start + D, start + D + S), slice(start + D + S, start + 2 * D + S)


def shape_of(weights: Mapping[str, np.ndarray], version: str) -> WkvShape:
    """Hyper-parameters from the shapes, where the official loaders read them."""
    n_vocab, n_embed = weights["emb.weight"].shape
    n_layer = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    if version.startswith("5"):
        n_head = weights["blocks.0.att.time_decay"].shape[0]
    elif version == "6.0":
        n_head = weights["blocks.0.att.time_faaaa"].shape[0]
    else:
        n_head = weights["blocks.0.att.r_k"].shape[0]
    return WkvShape(version, n_vocab, n_embed, n_layer, n_head, n_embed // n_head)


# ---------------------------------------------------------------------------
# Shared blocks
# ---------------------------------------------------------------------------


def layer_norm(x, w, b, eps=LAYER_NORM_EPS):
    """F.layer_norm over the last axis (biased variance)."""
    centered = x - x.mean()
    return centered / np.sqrt(np.mean(centered * centered) + eps) * w + b


def group_norm(x, n_head, w, b, eps):
    """F.group_norm of one vector with n_head groups."""
    g = x.reshape(n_head, -1)
    centered = g - g.mean(axis=1, keepdims=True)
    var = np.mean(centered * centered, axis=1, keepdims=True)
    return (centered / np.sqrt(var + eps)).reshape(-1) * w + b


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def wkv5_head(r, k, v, w, u, S):
    """One head of RWKV-5/6 at one token, S indexed [key i, value j]:
    a = k v^T; y = r^T (u a + S); S' = a + w S (w and u per key channel)."""
    a = np.outer(k, v)
    y = r @ (u[:, None] * a + S)
    return y, a + w[:, None] * S


def wkv7_head(r, w, k, v, kk, a, S):
    """One head of RWKV-7 at one token, S indexed [value i, key j]:
    S' = S diag(w) + (S (-kk)) (kk a)^T + v k^T; y = S' r."""
    S = S * w[None, :] + np.outer(S @ -kk, kk * a) + np.outer(v, k)
    return S @ r, S


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class WkvReference:
    """The float64 reference of one RWKV-5/6/7 model.

    weights: the official state dict (name -> array, official shapes).
    embedding_round: applied to the float32 ln0(emb) row (bf16 checkpoints
    of v5/v6: the official loader rounds it to bf16; None otherwise).
    """

    def __init__(self, weights: Mapping[str, np.ndarray], version: str,
                 embedding_round: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                 ln_x_eps: float = LN_X_EPS):
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.version = version
        self.shape = shape_of(weights, version)
        self.embedding_round = embedding_round
        self.ln_x_eps = ln_x_eps

    def initial_state(self) -> np.ndarray:
        return np.zeros(self.shape.state_len)

    def embed(self, token: int) -> np.ndarray:
        """ln0(emb[token]) in float64, rounded to float32 (and as the loader does)."""
        e = layer_norm(self.w["emb.weight"][token], self.w["blocks.0.ln0.weight"], self.w["blocks.0.ln0.bias"])
        e = e.astype(np.float32)
        if self.embedding_round is not None:
            e = self.embedding_round(e)
        return e.astype(np.float64)

    def eval(self, token: int, state: Optional[np.ndarray] = None):
        """Logits and the new state after one token (the input is not modified)."""
        state = self.initial_state() if state is None else np.array(state, dtype=np.float64)
        x = self.embed(token)
        v_first = None
        for i in range(self.shape.n_layer):
            sl = self.shape.slices(i)
            if self.version == "7.0":
                x, v_first = self.att_v7(i, x, state, sl, v_first)
            elif self.version == "6.0":
                x = self.att_v6(i, x, state, sl)
            else:
                x = self.att_v5(i, x, state, sl)
            x = self.ffn(i, x, state, sl)
        x = layer_norm(x, self.w["ln_out.weight"], self.w["ln_out.bias"])
        return self.w["head.weight"] @ x, state

    # -- time mixing ---------------------------------------------------------

    def _shifted(self, i, x, state, slot, ln):
        """xx = ln(x); sx = the state's x_prev, which becomes xx."""
        p = f"blocks.{i}."
        xx = layer_norm(x, self.w[p + ln + ".weight"], self.w[p + ln + ".bias"])
        sx = state[slot].copy()
        state[slot] = xx
        return xx, sx

    def _wkv5(self, i, r, k, v, w, u, state, slot):
        H, N = self.shape.n_head, self.shape.head_size
        S = state[slot].reshape(H, N, N)
        y = np.empty(H * N)
        for h in range(H):
            c = slice(h * N, (h + 1) * N)
            y[c], S[h] = wkv5_head(r[c], k[c], v[c], w[c], u[c], S[h])
        state[slot] = S.reshape(-1)
        p = f"blocks.{i}.att."
        return group_norm(y, H, self.w[p + "ln_x.weight"], self.w[p + "ln_x.bias"], self.ln_x_eps)

    def _per_channel(self, values):
        """(H) per-head values (5.0/5.1) -> (D); (H, N) -> (D)."""
        H, N = self.shape.n_head, self.shape.head_size
        return np.broadcast_to(values.reshape(H, -1), (H, N)).reshape(-1)

    def att_v5(self, i, x, state, sl):
        p = f"blocks.{i}.att."
        xx, sx = self._shifted(i, x, state, sl[0], "ln1")

        def mix(m):  # xx * time_mix + sx * (1 - time_mix)
            mu = self.w[p + "time_mix_" + m].reshape(-1)
            return xx * mu + sx * (1 - mu)

        r, k, v = (self.w[p + n + ".weight"] @ mix(m) for n, m in
                   (("receptance", "r"), ("key", "k"), ("value", "v")))
        w = self._per_channel(np.exp(-np.exp(self.w[p + "time_decay"])))
        if p + "time_faaaa" in self.w:
            u = self._per_channel(self.w[p + "time_faaaa"])
        else:
            u = self._per_channel(np.exp(self.w[p + "time_first"]))
        y = self._wkv5(i, r, k, v, w, u, state, sl[1])
        if self.version != "5.0":
            y = y * silu(self.w[p + "gate.weight"] @ mix("g"))
        return x + self.w[p + "output.weight"] @ y

    def att_v6(self, i, x, state, sl):
        p = f"blocks.{i}.att."
        xx, sx = self._shifted(i, x, state, sl[0], "ln1")
        sx = sx - xx
        vec = {m: self.w[p + "time_maa_" + m].reshape(-1) for m in "xwkvrg"}
        # xxx = tanh((xx + sx * maa_x) @ w1).view(5, E); m_i = xxx[i] @ w2[i]
        lora = np.tanh((xx + sx * vec["x"]) @ self.w[p + "time_maa_w1"]).reshape(5, -1)
        shifts = [lora[j] @ self.w[p + "time_maa_w2"][j] for j in range(5)]
        wx, kx, vx, rx, gx = (xx + sx * (vec[m] + s) for m, s in zip("wkvrg", shifts))
        r = self.w[p + "receptance.weight"] @ rx
        k = self.w[p + "key.weight"] @ kx
        v = self.w[p + "value.weight"] @ vx
        g = silu(self.w[p + "gate.weight"] @ gx)
        decay = self.w[p + "time_decay"].reshape(-1) + np.tanh(wx @ self.w[p + "time_decay_w1"]) @ self.w[
            p + "time_decay_w2"]
        y = self._wkv5(i, r, k, v, np.exp(-np.exp(decay)), self.w[p + "time_faaaa"].reshape(-1), state, sl[1])
        return x + self.w[p + "output.weight"] @ (y * g)

    def att_v7(self, i, x, state, sl, v_first):
        p = f"blocks.{i}.att."
        H, N = self.shape.n_head, self.shape.head_size
        xx, sx = self._shifted(i, x, state, sl[0], "ln1")
        vec = lambda n: self.w[p + n].reshape(-1)  # noqa: E731
        xr, xw, xk, xv, xa, xg = (xx + (sx - xx) * vec("x_" + m) for m in "rwkvag")
        r = self.w[p + "receptance.weight"] @ xr
        k = self.w[p + "key.weight"] @ xk
        v = self.w[p + "value.weight"] @ xv
        w = np.exp(-V7_DECAY_SCALE * sigmoid(vec("w0") + np.tanh(xw @ self.w[p + "w1"]) @ self.w[p + "w2"]))
        a = sigmoid(vec("a0") + (xa @ self.w[p + "a1"]) @ self.w[p + "a2"])
        g = sigmoid(xg @ self.w[p + "g1"]) @ self.w[p + "g2"]
        kk = (k * vec("k_k")).reshape(H, N)
        kk = (kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), L2_NORM_EPS)).reshape(-1)
        k = k * (1 + (a - 1) * vec("k_a"))
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * sigmoid(vec("v0") + (xv @ self.w[p + "v1"]) @ self.w[p + "v2"])
        S = state[sl[1]].reshape(H, N, N)
        y = np.empty(H * N)
        for h in range(H):
            c = slice(h * N, (h + 1) * N)
            y[c], S[h] = wkv7_head(r[c], w[c], k[c], v[c], kk[c], a[c], S[h])
        state[sl[1]] = S.reshape(-1)
        y = group_norm(y, H, self.w[p + "ln_x.weight"], self.w[p + "ln_x.bias"], self.ln_x_eps)
        bonus = (r * k * self.w[p + "r_k"].reshape(-1)).reshape(H, N).sum(axis=1, keepdims=True)
        y = y + (bonus * v.reshape(H, N)).reshape(-1)
        return x + self.w[p + "output.weight"] @ (y * g), v_first

    # -- channel mixing ------------------------------------------------------

    def ffn(self, i, x, state, sl):
        p = f"blocks.{i}.ffn."
        xx, sx = self._shifted(i, x, state, sl[2], "ln2")
        if self.version == "7.0":  # k = x + (x_prev - x) * x_k; relu(k @ K) ** 2 @ V
            kx = xx + (sx - xx) * self.w[p + "x_k"].reshape(-1)
            return x + self.w[p + "value.weight"] @ np.maximum(self.w[p + "key.weight"] @ kx, 0) ** 2
        if self.version == "6.0":  # xx + (sx - xx) * maa
            kx = xx + (sx - xx) * self.w[p + "time_maa_k"].reshape(-1)
            rx = xx + (sx - xx) * self.w[p + "time_maa_r"].reshape(-1)
        else:  # xx * mix + sx * (1 - mix)
            mk, mr = self.w[p + "time_mix_k"].reshape(-1), self.w[p + "time_mix_r"].reshape(-1)
            kx, rx = xx * mk + sx * (1 - mk), xx * mr + sx * (1 - mr)
        r = sigmoid(self.w[p + "receptance.weight"] @ rx)
        return x + r * (self.w[p + "value.weight"] @ np.maximum(self.w[p + "key.weight"] @ kx, 0) ** 2)


def run(model: WkvReference, tokens, state=None):
    """Logits (T, V) and states (T, state_len) after each token."""
    logits, states = [], []
    for token in tokens:
        out, state = model.eval(int(token), state)
        logits.append(out)
        states.append(state.copy())
    return np.stack(logits), np.stack(states)


def state_errors(shape: WkvShape, actual: np.ndarray, expected: np.ndarray) -> dict:
    """Max-abs error of each kind of state slot: the token-shift vectors
    (x_prev) and the WKV matrices (relative to max(1, |expected|))."""
    xprev, wkv = [], []
    for i in range(shape.n_layer):
        a, s, f = shape.slices(i)
        xprev.append(np.abs(actual[a] - expected[a]).max())
        xprev.append(np.abs(actual[f] - expected[f]).max())
        wkv.append((np.abs(actual[s] - expected[s]) / np.maximum(1.0, np.abs(expected[s]))).max())
    return {"x_prev": float(max(xprev)), "wkv": float(max(wkv))}
