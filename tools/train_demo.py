#!/usr/bin/env python3
"""Train the small RWKV-4 demo model of rwkv_cpp on the Shakespeare corpus.

A training tool, not part of the runtime package. It trains an RWKV-4 language
model in parallel "GPT mode" whose maths is exactly that of the official RNN
mode (the `rwkv` PyPI package, `att_one`/`ffn_one` for version 4), and writes
the best checkpoint (by validation loss) as an official-format bf16 `.pth`.

Sub-commands:
  train     train, early-stop on validation loss, export the checkpoint, the
            log, the final evaluation and the GPT-mode logits for parity tests
  selftest  parallel WKV against the sequential recurrence (values and
            gradients, fp64), and GPT-mode logits against the official
            package's RNN mode on tiny random checkpoints (needs `rwkv`)
  check     an exported checkpoint in the official package's RNN mode against
            the logits the trainer stored (`gpt_mode_logits.npz`)
  select    pick the best of several finished runs and copy its files

Reproduce the shipped model (one H200, under 6 minutes; see demo/MODEL_CARD.md):
  python3 tools/train_demo.py train --data-dir DATA/shakespeare \
      --tokenizer DATA/20B_tokenizer.json --n-embd 192 --n-layer 8 --dropout 0.1 \
      --ctx-len 512 --batch-size 16 --time-budget-s 450 --out-dir OUT
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Token 0 of the 20B (GPT-NeoX) tokenizer, used between documents.
END_OF_TEXT = 0
# Feed-forward width of RWKV-4 as a multiple of the embedding width.
FFN_MULT = 4
# Elements of one (batch chunk, channel, T, T) WKV score tensor: bounds the
# transient memory of the parallel WKV (2**29 fp32 = 2 GiB).
WKV_CHUNK_ELEMENTS = 2 ** 29
# How many stored vocabulary entries / top logits the parity file keeps.
PARITY_VOCAB_SLICE = 2048
PARITY_TOP_K = 64


@dataclass
class Config:
    vocab_size: int = 50277
    n_embd: int = 192
    n_layer: int = 8
    dropout: float = 0.0


# --------------------------------------------------------------------------
# WKV
# --------------------------------------------------------------------------

def wkv_bias(w: torch.Tensor, u: torch.Tensor, T: int) -> torch.Tensor:
    """Per-channel additive scores of the WKV "attention", shape (C, T, T).

    bias[c, t, i] = (t-1-i) * w[c] for i < t, u[c] for i == t, -inf for i > t,
    where w = -exp(time_decay) < 0 and u = time_first.
    """
    t = torch.arange(T, device=w.device)
    dist = (t[:, None] - 1 - t[None, :]).to(w.dtype)            # t-1-i
    neg_inf = torch.tensor(float("-inf"), dtype=w.dtype, device=w.device)
    bias = torch.where(dist >= 0, dist * w[:, None, None], neg_inf)
    return torch.where(dist == -1, u[:, None, None].expand_as(bias), bias)


def _batch_chunk(B: int, C: int, T: int, max_elements: int) -> int:
    return max(1, min(B, max_elements // max(1, C * T * T)))


class ParallelWKV(torch.autograd.Function):
    """Exact RWKV-4 WKV over a whole sequence, as a per-channel softmax.

    wkv[t] = (sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u + k_t} v_t)
           / (sum_{i<t} e^{(t-1-i)w + k_i}     + e^{u + k_t})
           = sum_i p[t, i] v_i,   p[t, :] = softmax_i(bias[t, i] + k_i)
    The softmax subtracts the row maximum, so no exp overflows (the role of
    the max-exponent state of the RNN mode). Memory is O(C T^2) per batch
    chunk (`max_elements` bounds one (b, C, T, T) tensor); p is recomputed in
    the backward pass, not stored. Inputs and outputs are fp32.

    Gradients, with g = dL/dwkv and s[t, i] = bias[t, i] + k_i:
      dL/ds[t,i] = p[t,i] g_t (v_i - y_t)
      dL/dv = p^T g;   dL/dk = v * (p^T g) - p^T (g * y)
      dL/du = sum_t p[t,t] g_t (v_t - y_t)
      dL/dw = sum_t g_t (A_t - y_t S_t),  A_t = sum_{i<t} p[t,i] (t-1-i) v_i,
              S_t = sum_{i<t} p[t,i] (t-1-i); both come from p @ [i v, i]
              (the forward pass's matvecs), so no T x T gradient is formed.
    """

    @staticmethod
    def forward(ctx, w, u, k, v, max_elements=WKV_CHUNK_ELEMENTS):   # w, u: (C,); k, v: (B, T, C)
        B, T, C = k.shape
        kt = k.transpose(1, 2).contiguous()                          # (B, C, T)
        vt = v.transpose(1, 2).contiguous()
        pos = torch.arange(T, device=k.device, dtype=k.dtype)        # i
        bias = wkv_bias(w, u, T)
        y, a_sum, s_sum, p_diag = (torch.empty_like(kt) for _ in range(4))
        step = ctx.step = _batch_chunk(B, C, T, max_elements)
        for b0 in range(0, B, step):
            sl = slice(b0, b0 + step)
            p = torch.softmax(kt[sl, :, None, :] + bias, dim=-1)     # (b, C, T, T)
            rhs = torch.stack([vt[sl], vt[sl] * pos, pos.expand_as(vt[sl])], -1)
            pv, piv, pi = (p @ rhs).unbind(-1)                       # p@v, p@(i v), p@i
            p_tt = torch.diagonal(p, dim1=-2, dim2=-1).clone()
            del p
            y[sl] = pv
            # sum_{i<t} p (t-1-i) x = (t-1) p@x - p@(i x) + p[t,t] x_t, x in {v, 1}
            a_sum[sl] = (pos - 1) * pv - piv + p_tt * vt[sl]
            s_sum[sl] = (pos - 1) - pi + p_tt
            p_diag[sl] = p_tt
        ctx.save_for_backward(w, u, kt, vt, y, a_sum, s_sum, p_diag)
        return y.transpose(1, 2)

    @staticmethod
    def backward(ctx, gy):
        w, u, kt, vt, y, a_sum, s_sum, p_diag = ctx.saved_tensors
        B, C, T = kt.shape
        g = gy.transpose(1, 2).to(kt.dtype).contiguous()             # (B, C, T)
        gw = (g * (a_sum - y * s_sum)).sum((0, 2))
        gu = (p_diag * g * (vt - y)).sum((0, 2))
        bias = wkv_bias(w, u, T)
        gk, gv = torch.empty_like(kt), torch.empty_like(vt)
        for b0 in range(0, B, ctx.step):
            sl = slice(b0, b0 + ctx.step)
            p = torch.softmax(kt[sl, :, None, :] + bias, dim=-1)
            pg, pgy = (p.transpose(-1, -2) @ torch.stack([g[sl], g[sl] * y[sl]], -1)).unbind(-1)
            del p
            gv[sl] = pg
            gk[sl] = vt[sl] * pg - pgy
        return gw, gu, gk.transpose(1, 2), gv.transpose(1, 2), None


def wkv_sequential(w, u, k, v):
    """Naive reference: the official RNN-mode recurrence (aa, bb, pp)."""
    B, T, C = k.shape
    aa = torch.zeros(B, C, dtype=k.dtype, device=k.device)
    bb = torch.zeros_like(aa)
    pp = torch.full_like(aa, -1e30)
    out = []
    for t in range(T):
        kk, vv = k[:, t], v[:, t]
        ww = u + kk
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        out.append((e1 * aa + e2 * vv) / (e1 * bb + e2))
        ww = w + pp
        p = torch.maximum(ww, kk)
        e1, e2 = torch.exp(ww - p), torch.exp(kk - p)
        aa, bb, pp = e1 * aa + e2 * vv, e1 * bb + e2, p
    return torch.stack(out, 1)


# --------------------------------------------------------------------------
# Model (parameter names and shapes exactly as BlinkDL's RWKV-4 checkpoints)
# --------------------------------------------------------------------------

def token_shift(x: torch.Tensor) -> torch.Tensor:
    """prev[t] = x[t-1], zeros before the first token."""
    return F.pad(x, (0, 0, 1, -1))


def mix(x, prev, mu):
    """v4 token shift: x*mu + prev*(1-mu)."""
    return x * mu + prev * (1 - mu)


class TimeMix(nn.Module):
    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        D = cfg.n_embd
        self.time_decay = nn.Parameter(torch.zeros(D))
        self.time_first = nn.Parameter(torch.zeros(D))
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, D))
        self.time_mix_v = nn.Parameter(torch.zeros(1, 1, D))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, D))
        self.key = nn.Linear(D, D, bias=False)
        self.value = nn.Linear(D, D, bias=False)
        self.receptance = nn.Linear(D, D, bias=False)
        self.output = nn.Linear(D, D, bias=False)

    def forward(self, x):                              # x: ln1 output (B, T, D)
        prev = token_shift(x)
        r = torch.sigmoid(self.receptance(mix(x, prev, self.time_mix_r)))
        k = self.key(mix(x, prev, self.time_mix_k)).float()
        v = self.value(mix(x, prev, self.time_mix_v)).float()
        # The WKV stays fp32 (exp of scores): autocast off around it.
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = -torch.exp(self.time_decay.float())
            y = ParallelWKV.apply(w, self.time_first.float(), k, v)
        return self.output(r * y.to(r.dtype))


class ChannelMix(nn.Module):
    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        D = cfg.n_embd
        self.time_mix_k = nn.Parameter(torch.zeros(1, 1, D))
        self.time_mix_r = nn.Parameter(torch.zeros(1, 1, D))
        self.key = nn.Linear(D, FFN_MULT * D, bias=False)
        self.receptance = nn.Linear(D, D, bias=False)
        self.value = nn.Linear(FFN_MULT * D, D, bias=False)

    def forward(self, x):                              # x: ln2 output (B, T, D)
        prev = token_shift(x)
        # sigmoid(R xr) * (V relu(K xk)^2)
        r = torch.sigmoid(self.receptance(mix(x, prev, self.time_mix_r)))
        kk = torch.relu(self.key(mix(x, prev, self.time_mix_k))) ** 2
        return r * self.value(kk)


class Block(nn.Module):
    def __init__(self, cfg: Config, layer_id: int):
        super().__init__()
        D = cfg.n_embd
        self.ln1 = nn.LayerNorm(D)
        self.ln2 = nn.LayerNorm(D)
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(D)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg, layer_id)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        x = x + self.drop(self.att(self.ln1(x)))
        return x + self.drop(self.ffn(self.ln2(x)))


class RWKV4(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # The official package applies ln0 to the embedding once, at load time,
        # in the file's dtype: set to torch.bfloat16 to reproduce that rounding
        # when computing logits of a bf16 checkpoint.
        self.ln0_round_dtype: torch.dtype | None = None

    def forward(self, idx):                            # idx: (B, T) int64
        x = self.blocks[0].ln0(self.emb(idx))
        if self.ln0_round_dtype is not None:
            x = x.to(self.ln0_round_dtype).to(torch.float32)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_out(x))


@torch.no_grad()
def init_official(model: RWKV4, emb_scale: float = 1e-4) -> None:
    """The RWKV-4 initialisation of BlinkDL's RWKV-LM (v4neo)."""
    cfg = model.cfg
    D, L = cfg.n_embd, cfg.n_layer
    ddd = torch.arange(D, dtype=torch.float32) / D     # c / D
    for i, block in enumerate(model.blocks):
        ratio_0_to_1 = i / max(1, L - 1)
        ratio_1_to_almost0 = 1.0 - i / L
        att, ffn = block.att, block.ffn
        c = torch.arange(D, dtype=torch.float32)
        att.time_decay.copy_(-5 + 8 * (c / (D - 1)) ** (0.7 + 1.3 * ratio_0_to_1))
        zigzag = torch.tensor([(j + 1) % 3 - 1 for j in range(D)], dtype=torch.float32) * 0.5
        att.time_first.copy_(math.log(0.3) + zigzag)
        att.time_mix_k.copy_(torch.pow(ddd, ratio_1_to_almost0).view(1, 1, D))
        att.time_mix_v.copy_((torch.pow(ddd, ratio_1_to_almost0) + 0.3 * ratio_0_to_1).view(1, 1, D))
        att.time_mix_r.copy_(torch.pow(ddd, 0.5 * ratio_1_to_almost0).view(1, 1, D))
        ffn.time_mix_k.copy_(torch.pow(ddd, ratio_1_to_almost0).view(1, 1, D))
        ffn.time_mix_r.copy_(torch.pow(ddd, ratio_1_to_almost0).view(1, 1, D))
        # key/receptance/output of att and value/receptance of ffn start at zero;
        # att.value and ffn.key orthogonal with gain sqrt(max(out/in, 1)).
        for lin in (att.key, att.receptance, att.output, ffn.value, ffn.receptance):
            nn.init.zeros_(lin.weight)
        for lin in (att.value, ffn.key):
            rows, cols = lin.weight.shape
            nn.init.orthogonal_(lin.weight, gain=math.sqrt(max(rows / cols, 1.0)))
    nn.init.uniform_(model.emb.weight, -emb_scale, emb_scale)
    V = cfg.vocab_size
    nn.init.orthogonal_(model.head.weight, gain=0.5 * math.sqrt(max(V / D, 1.0)))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_state(model: RWKV4, dtype=torch.bfloat16) -> dict:
    """Plain dict of contiguous CPU tensors, official key order and shapes."""
    return {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}


def model_from_state(state: dict, dropout: float = 0.0) -> RWKV4:
    V, D = state["emb.weight"].shape
    L = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    model = RWKV4(Config(vocab_size=V, n_embd=D, n_layer=L, dropout=dropout))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    if state["emb.weight"].dtype in (torch.bfloat16, torch.float16):
        model.ln0_round_dtype = state["emb.weight"].dtype
    return model


# --------------------------------------------------------------------------
# Data and evaluation
# --------------------------------------------------------------------------

def load_corpus(data_dir: str, tokenizer_path: str, val_names: list[str]):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    files = sorted(glob.glob(os.path.join(data_dir, "*.txt")))
    if not files:
        sys.exit(f"no .txt files in {data_dir}")
    train_ids, val_docs = [], {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            ids = tok.encode(f.read()).ids
        name = os.path.basename(path)
        if name in val_names:
            val_docs[name] = ids
        else:
            train_ids.extend(ids + [END_OF_TEXT])
    missing = set(val_names) - set(val_docs)
    if missing:
        sys.exit(f"validation files not found: {sorted(missing)}")
    return tok, train_ids, val_docs, len(files) - len(val_docs)


def eval_windows(doc: list[int], ctx_len: int, stride: int):
    """Sliding windows over one document: (inputs, targets, scored-mask) rows.

    Every target doc[j], j >= 1, is scored exactly once, in the window where it
    has the most context: windows start every `stride` tokens and score only
    targets not scored by an earlier window.
    """
    n, rows, scored_upto = len(doc), [], 1
    for start in range(0, max(1, n - 1), stride):
        inp = doc[start:start + ctx_len]
        tgt = doc[start + 1:start + ctx_len + 1]
        inp = inp[:len(tgt)]
        if not tgt:
            break
        mask = [start + 1 + j >= scored_upto for j in range(len(tgt))]
        scored_upto = start + 1 + len(tgt)
        pad = ctx_len - len(tgt)
        rows.append((inp + [0] * pad, tgt + [0] * pad, mask + [False] * pad))
        if scored_upto >= n:
            break
    return rows


@torch.no_grad()
def evaluate(model, docs, ctx_len, stride, device, batch=32, autocast=None):
    """Token-level cross-entropy (nats) over all of `docs`."""
    rows = [r for d in docs for r in eval_windows(d, ctx_len, stride)]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b0 in range(0, len(rows), batch):
        inp, tgt, mask = (torch.tensor(x, device=device) for x in zip(*rows[b0:b0 + batch]))
        with torch.autocast(device_type=device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(inp)
        nll = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none")
        total += nll[mask.flatten()].double().sum().item()
        count += int(mask.sum().item())
    model.train(was_training)
    return total / count, count


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

class Log:
    """JSON-lines log, flushed on every record so partial runs come back."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.f = open(path, "w")

    def __call__(self, **rec):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        print(json.dumps(rec), flush=True)


def make_optimizer(model, lr, weight_decay, device):
    """AdamW; weight decay on matrices only; time_decay at 2x and time_first
    at 3x the learning rate, as RWKV-LM does for v4."""
    groups = {"decay": [], "plain": [], "td": [], "tf": []}
    for n, p in model.named_parameters():
        if n.endswith("time_decay"):
            groups["td"].append(p)
        elif n.endswith("time_first"):
            groups["tf"].append(p)
        elif p.dim() >= 2 and "time_mix" not in n:
            groups["decay"].append(p)
        else:
            groups["plain"].append(p)
    spec = [("decay", weight_decay, 1.0), ("plain", 0.0, 1.0), ("td", 0.0, 2.0), ("tf", 0.0, 3.0)]
    param_groups = [{"params": groups[g], "weight_decay": wd, "lr_scale": s} for g, wd, s in spec]
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.99), eps=1e-8, **kw)


def lr_at(step, progress, args):
    """Linear warmup over steps, then cosine from lr to lr*min_lr_ratio over
    progress in [0, 1] (the larger of time and token fractions)."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    c = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * c)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_file(path, part_bytes):
    parts = []
    with open(path, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(part_bytes), b"")):
            part = f"{path}.part{i:02d}"
            with open(part, "wb") as g:
                g.write(chunk)
            parts.append(part)
    return parts


def set_fp32_exact():
    """Plain fp32 matmuls (no TF32) for the WKV and the parity logits."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@torch.no_grad()
def parity_logits(state, tokens, device):
    """fp32 logits of the bf16-rounded weights as saved, ln0 rounded as the
    official package does, for the GPT-mode = RNN-mode acceptance test."""
    model = model_from_state(state).to(device).eval()
    logits = model(torch.tensor([tokens], device=device))[0].float().cpu()
    top_val, top_idx = logits.topk(PARITY_TOP_K, dim=-1)
    return {
        "tokens": np.asarray(tokens, dtype=np.int32),
        "logits_head": logits[:, :PARITY_VOCAB_SLICE].numpy().astype(np.float32),
        "top_idx": top_idx.numpy().astype(np.int32),
        "top_val": top_val.numpy().astype(np.float32),
        "logsumexp": torch.logsumexp(logits, -1).numpy().astype(np.float32),
        "last_logits": logits[-1].numpy().astype(np.float32),
    }


def train_loop(model, opt, train, args, device, log, val_docs):
    """Returns (best state dict on CPU in fp32, best val loss, stats)."""
    T, B = args.ctx_len, args.batch_size
    n_train = train.numel()
    horizon_tokens = args.max_epochs * n_train
    amp = torch.bfloat16 if args.bf16 else None
    offs_t = torch.arange(T + 1, device=device)
    best, best_val, best_step, bad_evals, last_eval_step = None, float("inf"), -1, 0, -1
    step, tokens, t0 = 0, 0, time.time()
    last_log_t, last_log_tokens, next_eval = t0, 0, t0 + args.eval_every_s
    loss_acc, loss_n = 0.0, 0
    while True:
        elapsed = time.time() - t0
        progress = max(elapsed / args.time_budget_s, tokens / horizon_tokens,
                       step / args.max_steps if args.max_steps else 0.0)
        done = progress >= 1.0
        if done and step == last_eval_step:
            break
        if done or time.time() >= next_eval:
            last_eval_step = step
            val, _ = evaluate(model, val_docs, T, T, device, autocast=amp)
            if val < best_val - 1e-4 or best is None:
                best_val, best_step, bad_evals = val, step, 0
                best = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
            log(event="eval", step=step, tokens=tokens, epoch=tokens / n_train,
                val_loss=val, best_val_loss=best_val, elapsed_s=time.time() - t0)
            next_eval = time.time() + args.eval_every_s
            if done or bad_evals >= args.patience:
                break
        lr = lr_at(step, progress, args)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        idx = torch.randint(0, n_train - T - 1, (B,), device=device)
        xy = train[idx[:, None] + offs_t]
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
            logits = model(xy[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), xy[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        tokens += B * T
        loss_acc, loss_n = loss_acc + loss.detach(), loss_n + 1   # no host sync here
        if step % args.log_every == 0:
            now = time.time()
            log(event="train", step=step, tokens=tokens, epoch=tokens / n_train,
                train_loss=float(loss_acc) / loss_n, lr=lr,
                tok_per_s=(tokens - last_log_tokens) / (now - last_log_t), elapsed_s=now - t0)
            loss_acc, loss_n, last_log_t, last_log_tokens = 0.0, 0, now, tokens
    stats = {"steps": step, "tokens_seen": tokens, "epochs": tokens / n_train,
             "train_time_s": time.time() - t0, "best_step": best_step,
             "best_tokens": best_step * B * T, "stopped_early": bad_evals >= args.patience}
    return best, best_val, stats


def export(best, args, device, log, train, val_docs, hamlet, stats, cfg, n_params):
    """Save the bf16 checkpoint, evaluate it in fp32, write the parity logits."""
    set_fp32_exact()
    os.makedirs(args.out_dir, exist_ok=True)
    name = f"rwkv4-shakespeare-L{cfg.n_layer}-D{cfg.n_embd}"
    pth = os.path.join(args.out_dir, name + ".pth")
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in best.items()}
    torch.save(state, pth)
    digest = sha256_of(pth)
    # Evaluate the checkpoint as saved: bf16 weights, fp32 maths.
    model = model_from_state(state).to(device).eval()
    T = args.ctx_len
    val_loss, val_tokens = evaluate(model, val_docs, T, T // 2, device)
    val_loss_nonoverlap, _ = evaluate(model, val_docs, T, T, device)
    n = train.numel()
    sample_starts = np.linspace(0, n - T - 2, num=max(1, args.train_eval_tokens // T)).astype(np.int64)
    train_sample = [train[s:s + T + 1].tolist() for s in sample_starts]
    train_loss, train_tokens = evaluate(model, train_sample, T, T, device)
    del model
    par = parity_logits(state, hamlet[:args.parity_tokens], device)
    npz = os.path.join(args.out_dir, "gpt_mode_logits.npz")
    np.savez_compressed(npz, **par)
    parts = split_file(pth, args.split_mib << 20) if args.split_mib > 0 else []
    final = {
        "event": "final", "config": asdict(cfg), "n_params": n_params,
        "ctx_len": T, "batch_size": args.batch_size, "checkpoint": os.path.basename(pth),
        "sha256": digest, "bytes": os.path.getsize(pth),
        "parts": [os.path.basename(p) for p in parts],
        "part_sha256": [sha256_of(p) for p in parts],
        "val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_tokens": val_tokens,
        "val_loss_nonoverlapping": val_loss_nonoverlap,
        "train_loss": train_loss, "train_ppl": math.exp(train_loss), "train_eval_tokens": train_tokens,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, **stats,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
        json.dump(final, f, indent=1)
    log(**final)
    return final


def cmd_train(args):
    t_start = time.time()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    set_fp32_exact()
    log = Log(args.log_file or os.path.join(args.out_dir, "train_log.jsonl"))
    val_names = [s.strip() for s in args.val_files.split(",") if s.strip()]
    tok, train_ids, val_map, n_train_files = load_corpus(args.data_dir, args.tokenizer, val_names)
    cfg = Config(vocab_size=tok.get_vocab_size(), n_embd=args.n_embd, n_layer=args.n_layer,
                 dropout=args.dropout)
    model = RWKV4(cfg)
    init_official(model)
    model.to(device)
    n_params = param_count(model)
    log(event="config", **asdict(cfg), n_params=n_params, train_tokens=len(train_ids),
        train_files=n_train_files, val_files=val_names,
        val_tokens=sum(len(d) for d in val_map.values()), args=vars(args),
        device=str(device), setup_s=time.time() - t_start)
    train = torch.tensor(train_ids, dtype=torch.long, device=device)
    val_docs = [val_map[n] for n in val_names]
    opt = make_optimizer(model, args.lr, args.weight_decay, device)
    best, best_val, stats = train_loop(model, opt, train, args, device, log, val_docs)
    hamlet = val_map.get("hamlet.txt", val_docs[0])
    return export(best, args, device, log, train, val_docs, hamlet, stats, cfg, n_params)


# --------------------------------------------------------------------------
# Self-test and parity with the official package
# --------------------------------------------------------------------------

@torch.no_grad()
def randomize(model: RWKV4, gen: torch.Generator) -> None:
    """Non-trivial weights with realistic magnitudes (unlike the zero init)."""
    for n, p in model.named_parameters():
        if n.endswith("time_decay"):
            p.copy_(torch.rand(p.shape, generator=gen) * 8 - 5)
        elif n.endswith("time_first"):
            p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1.5)
        elif "time_mix" in n:
            p.copy_(torch.rand(p.shape, generator=gen))
        elif ".ln" in n or n.startswith("ln_out"):
            base = 1.0 if n.endswith("weight") else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def official_rnn_logits(pth, tokens):
    os.environ.setdefault("RWKV_JIT_ON", "0")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    from rwkv.model import RWKV
    model = RWKV(model=pth, strategy="cpu fp32", verbose=False)
    state, out = None, []
    for t in tokens:
        logits, state = model.forward([int(t)], state)
        out.append(logits.float())
    return torch.stack(out)


def cmd_selftest(args):
    import tempfile
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ok = True
    # 1. Parallel WKV against the recurrence, awkward sizes, fp64.
    for B, T, C in [(2, 7, 5), (3, 33, 4), (1, 1, 3)]:
        w = -torch.exp(torch.rand(C, dtype=torch.float64) * 8 - 5)
        u = torch.randn(C, dtype=torch.float64)
        k = torch.randn(B, T, C, dtype=torch.float64) * 3
        v = torch.randn(B, T, C, dtype=torch.float64)
        err = (ParallelWKV.apply(w, u, k, v) - wkv_sequential(w, u, k, v)).abs().max().item()
        # One batch row per chunk, to exercise the chunked loops too.
        grad_ok = torch.autograd.gradcheck(
            lambda *a: ParallelWKV.apply(*a, C * T * T),
            tuple(x.clone().requires_grad_() for x in (w, u, k, v)), eps=1e-6, atol=1e-6)
        print(f"wkv B={B} T={T} C={C}: max-abs vs recurrence {err:.2e}, gradcheck {grad_ok}")
        ok &= err <= 1e-10 and grad_ok
    # 2. GPT-mode logits against the official RNN mode, fp32 and bf16 files.
    cfg = Config(vocab_size=301, n_embd=48, n_layer=3)
    model = RWKV4(cfg)
    randomize(model, gen)
    tokens = torch.randint(0, cfg.vocab_size, (24,), generator=gen).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.float32, torch.bfloat16):
            pth = os.path.join(tmp, f"tiny_{dtype}.pth")
            state = export_state(model, dtype)
            torch.save(state, pth)
            ours = model_from_state(state).eval()(torch.tensor([tokens]))[0]
            ref = official_rnn_logits(pth, tokens)
            err = (ours - ref).abs().max().item()
            print(f"official RNN mode vs GPT mode, {dtype} file: max-abs logits {err:.2e} "
                  f"(logit scale {ref.abs().max().item():.1f})")
            ok &= err <= 1e-4
    print("SELFTEST", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


def cmd_check(args):
    par = np.load(args.npz)
    tokens = par["tokens"].tolist()
    ref = official_rnn_logits(args.pth, tokens).numpy()
    err_head = np.abs(ref[:, :PARITY_VOCAB_SLICE] - par["logits_head"]).max()
    err_top = np.abs(np.take_along_axis(ref, par["top_idx"], 1) - par["top_val"]).max()
    err_last = np.abs(ref[-1] - par["last_logits"]).max()
    lse = torch.logsumexp(torch.from_numpy(ref), -1).numpy()
    err_lse = np.abs(lse - par["logsumexp"]).max()
    err = max(err_head, err_top, err_last, err_lse)
    print(f"{len(tokens)} tokens: max-abs first-{PARITY_VOCAB_SLICE} {err_head:.2e}, "
          f"top-{PARITY_TOP_K} {err_top:.2e}, last row {err_last:.2e}, logsumexp {err_lse:.2e}")
    print("CHECK", "PASSED" if err <= args.tol else "FAILED", f"(tol {args.tol:g})")
    return 0 if err <= args.tol else 1


def cmd_select(args):
    """Copy the parts and parity file of the run with the lowest val loss."""
    runs = []
    for d in args.runs:
        try:
            with open(os.path.join(d, "summary.json")) as f:
                runs.append((json.load(f)["val_loss"], d))
        except (OSError, KeyError, ValueError) as e:
            print(f"skipping {d}: {e}")
    if not runs:
        print("no finished run")
        return 1
    val, best = min(runs)
    print(f"best run {best} (val loss {val:.4f}) of {sorted(runs)}")
    with open(os.path.join(best, "summary.json")) as f:
        summary = json.load(f)
    for name in summary["parts"] + ["gpt_mode_logits.npz"]:
        shutil.copy(os.path.join(best, name), args.dest)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train and export")
    tr.add_argument("--data-dir", default="../shared/data/shakespeare")
    tr.add_argument("--tokenizer", default="../shared/data/tokenizers/20B_tokenizer.json")
    tr.add_argument("--val-files", default="hamlet.txt,tempest.txt")
    tr.add_argument("--out-dir", default="demo_run")
    tr.add_argument("--log-file", default=None, help="default: OUT_DIR/train_log.jsonl")
    tr.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    tr.add_argument("--n-embd", type=int, default=192)
    tr.add_argument("--n-layer", type=int, default=8)
    tr.add_argument("--dropout", type=float, default=0.1)
    tr.add_argument("--ctx-len", type=int, default=512)
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--min-lr-ratio", type=float, default=0.05)
    tr.add_argument("--warmup-steps", type=int, default=100)
    tr.add_argument("--weight-decay", type=float, default=0.1)
    tr.add_argument("--grad-clip", type=float, default=1.0)
    tr.add_argument("--max-epochs", type=float, default=10.0, help="cosine horizon in epochs")
    tr.add_argument("--max-steps", type=int, default=0, help="cosine horizon in steps (0: none)")
    tr.add_argument("--time-budget-s", type=float, default=450.0, help="hard cap on training time")
    tr.add_argument("--eval-every-s", type=float, default=20.0)
    tr.add_argument("--patience", type=int, default=6, help="evals without improvement before stopping")
    tr.add_argument("--log-every", type=int, default=10)
    tr.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 matmuls")
    tr.add_argument("--train-eval-tokens", type=int, default=100_000)
    tr.add_argument("--parity-tokens", type=int, default=128)
    tr.add_argument("--split-mib", type=int, default=15, help="split the .pth in parts (0: no)")
    tr.add_argument("--seed", type=int, default=0)
    sub.add_parser("selftest", help="WKV and official-package parity on tiny models")
    ck = sub.add_parser("check", help="official RNN mode vs stored GPT-mode logits")
    ck.add_argument("--pth", required=True)
    ck.add_argument("--npz", required=True)
    ck.add_argument("--tol", type=float, default=1e-4)
    se = sub.add_parser("select", help="copy the best run's files")
    se.add_argument("--runs", nargs="+", required=True)
    se.add_argument("--dest", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "train":
        cmd_train(args)
        return 0
    return {"selftest": cmd_selftest, "check": cmd_check, "select": cmd_select}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
