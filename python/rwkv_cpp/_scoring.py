"""Shared maths of the perplexity and compare tools: log-softmax and the
negative log-likelihood of target tokens from logits (float64 sums)."""

import numpy as np


def log_softmax(logits):
    """Row-wise log-softmax in float64 (logits: [..., V])."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_nll(logits, targets):
    """-log p(target) for each row of logits [T, V] and targets [T]."""
    logits = np.asarray(logits)
    m = logits.max(axis=-1).astype(np.float64)
    lse = m + np.log(np.exp(logits - m[:, None].astype(logits.dtype)).sum(axis=-1, dtype=np.float64))
    picked = logits[np.arange(len(targets)), targets].astype(np.float64)
    return lse - picked


def kl_rows(ref_logits, logits):
    """KL(softmax(ref) || softmax(logits)) for each row."""
    a, b = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(a) * (a - b)).sum(axis=-1)


def read_token_file(path):
    """Pre-tokenized input: a .npy array of ids, or whitespace-separated
    integers in a text file."""
    if str(path).endswith(".npy"):
        return np.load(path).astype(np.int64).reshape(-1)
    with open(path) as f:
        return np.array([int(t) for t in f.read().split()], dtype=np.int64)
