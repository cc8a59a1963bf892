"""Worked example: a linear classifier on RWKV state embeddings, measured
against a bag-of-words baseline.

    python examples/embedding_classifier.py [--passage-tokens 128] [--threads N] [--workdir DIR]

Two tasks on the Shakespeare texts of the shared data folder
(../shared/data/shakespeare beside the checkout), with the bundled demo
model (RWKV-4, 8 layers, width 192, trained on those plays except hamlet and
tempest):

- play: which of six plays a passage of N tokens comes from.  Each play is
  cut into consecutive passages; the passages are split by position into 5
  contiguous blocks per play, and each block in turn is the test set (so test
  passages are text the classifier never saw).
- genre: comedy, history or tragedy (the First Folio's grouping), on plays
  the classifier never saw: 35 plays in 5 groups, each group in turn held
  out whole.

Normalisation statistics come from text in neither task (the poems,
Pericles and Troilus), collected with ``rwkv_cpp.embed_stats``.  The
classifier is softmax regression with an L2 penalty, fitted by L-BFGS in
numpy; its penalty is chosen per fold on a validation block carved out of
the training data.  The baseline is the same classifier on bag-of-words
features (log(1 + count) of lower-cased words, rows scaled to unit length,
vocabulary of the training passages).  Prints a Markdown table and writes
it, with the raw numbers, to WORKDIR.
"""

import argparse
import collections
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rwkv_cpp
from rwkv_cpp import embed_stats
from rwkv_cpp._cli import Progress
from rwkv_cpp.embedding import DEFAULT_PARTS, EmbedStats, Parts, RunningStats, from_state
from rwkv_cpp.tokenizers import for_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "shakespeare"

PLAYS = ("hamlet", "tempest", "macbeth", "othello", "twelfth_night", "henry_v")
GENRES = {
    "comedy": ("tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
               "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream",
               "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
               "twelfth_night", "winters_tale"),
    "history": ("john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
                "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii"),
    "tragedy": ("coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet", "timon_of_athens",
                "julius_caesar", "macbeth", "hamlet", "lear", "othello", "antony_and_cleopatra", "cymbeline"),
}
#: text in neither task: the normalisation statistics are collected on it.
STATS_CORPUS = ("sonnets", "rape_of_lucrece", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle",
                "pericles", "troilus_and_cressida")
HELD_OUT_OF_LM = ("hamlet", "tempest")  # not in the demo model's training data

N_FOLDS = 5
GENRE_PASSAGES_PER_PLAY = 60
LAMBDAS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # L2 penalty grid (features scaled to mean |x|^2 = 1)

#: (label, parts spec, normalisation): "corpus" = the stats file, "train" = mean/std of
#: the training passages of each fold, None = raw values.
CONFIGS = (
    ("default: wkv (aa/bb), every layer", DEFAULT_PARTS, "corpus"),
    ("wkv, not normalised", "wkv", None),
    ("wkv, normalised on the training passages", "wkv", "train"),
    ("wkv + pp", "wkv,pp", "corpus"),
    ("wkv, layers 0-3", "wkv@:4", "corpus"),
    ("wkv, layers 4-7", "wkv@4:", "corpus"),
    ("wkv, last layer", "wkv@-1", "corpus"),
    ("aa, bb", "aa,bb", "corpus"),
    ("att_xx, wkv, ffn_xx", "att_xx,wkv,ffn_xx", "corpus"),
    ("att_xx, ffn_xx", "att_xx,ffn_xx", "corpus"),
    ("ffn_xx, last layer", "ffn_xx@-1", "corpus"),
    ("stored state without pp: att_xx, aa, bb, ffn_xx", "att_xx,aa,bb,ffn_xx", "corpus"),
    ("stored state: att_xx, aa, bb, pp, ffn_xx", "att_xx,aa,bb,pp,ffn_xx", "corpus"),
    ("stored state, not normalised", "att_xx,aa,bb,pp,ffn_xx", None),
    ("all six parts", "all", "corpus"),
    ("mean of the 5 stored vectors over layers (what not to do)", "mean", None),
)


# ---------------------------------------------------------------------------
# Softmax regression with an L2 penalty, fitted by L-BFGS (numpy only)
# ---------------------------------------------------------------------------


def softmax_loss(theta, F, Y, lam, precond):
    """Mean cross-entropy + lam/2 |W|^2 (the bias is not penalised) and its
    gradient, for weights W = precond * theta[:-1] (a change of variables
    that makes the problem well-conditioned; see ``fit_softmax``)."""
    r, c = F.shape[1], Y.shape[1]
    B = theta.reshape(r + 1, c) * precond[:, None]
    W, b = B[:r], B[r]
    Z = F @ W + b
    Z -= Z.max(axis=1, keepdims=True)
    logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    n = F.shape[0]
    loss = -(Y * logp).sum() / n + 0.5 * lam * (W * W).sum()
    G = (np.exp(logp) - Y) / n
    grad = np.vstack([F.T @ G + lam * W, G.sum(axis=0)]) * precond[:, None]
    return loss, grad.ravel()


def lbfgs(fun, x, max_iter=300, memory=10, gtol=1e-6):
    """Minimises ``fun`` (returning value and gradient) from ``x``: L-BFGS
    two-loop recursion with a backtracking (Armijo) line search."""
    f, g = fun(x)
    s_hist, y_hist = [], []
    for _ in range(max_iter):
        if np.abs(g).max() < gtol:
            break
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(s_hist), reversed(y_hist)):
            a = s @ q / (y @ s)
            alphas.append(a)
            q -= a * y
        if s_hist:
            q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
        for (s, y), a in zip(zip(s_hist, y_hist), reversed(alphas)):
            q += s * (a - (y @ q) / (y @ s))
        direction, slope = -q, -(g @ q)
        if slope >= 0:  # not a descent direction: restart from the gradient
            s_hist, y_hist, direction, slope = [], [], -g, -(g @ g)
        step = 1.0
        while True:
            x_new = x + step * direction
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, y = x_new - x, g_new - g
        if s @ y > 1e-12:
            s_hist.append(s)
            y_hist.append(y)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = f - f_new <= 1e-12 * max(1.0, abs(f))
        x, f, g = x_new, f_new, g_new
        if converged:
            break
    return x


def fit_softmax(F, y, n_classes, lam, sq_norms):
    """Weights ``(r + 1, n_classes)`` (the last row is the bias) of softmax
    regression on ``F``, whose columns are orthogonal with squared norms
    ``sq_norms`` (``span_coordinates``).  The Hessian of the loss is then
    close to diagonal, about ``sq_norms / (4 n) + lam``, so the weights are
    optimised in units of its inverse square root: L-BFGS converges in tens
    of iterations instead of hundreds."""
    precond = 1.0 / np.sqrt(np.append(sq_norms / (4 * len(y)), 0.25) + np.append(np.full(len(sq_norms), lam), 0))
    Y = np.eye(n_classes)[y]
    theta = lbfgs(lambda t: softmax_loss(t, F, Y, lam, precond), np.zeros((F.shape[1] + 1) * n_classes))
    return theta.reshape(-1, n_classes) * precond[:, None]


def predict(weights, F):
    return (F @ weights[:-1] + weights[-1]).argmax(axis=1)


def span_coordinates(K, rows):
    """Coordinates of every passage in an orthonormal basis of the span of
    the feature vectors of ``rows``, from the Gram matrix ``K = X X^T``, and
    the squared norms of the columns over ``rows``.  An L2-penalised linear
    model fitted on ``rows`` has its weights in that span (the penalty
    removes any other component), so fitting in these r <= len(rows)
    coordinates is exact, and cheaper than in the d feature dimensions."""
    w, U = np.linalg.eigh(K[np.ix_(rows, rows)])
    keep = w > 1e-6 * w[-1]
    return K[:, rows] @ (U[:, keep] / np.sqrt(w[keep])), w[keep]


def fit_with_validation(K, y, n_classes, train, val):
    """Weights and coordinates of a classifier fitted on ``train | val``
    with the penalty that scored best on ``val`` when fitted on ``train``
    (ties: the stronger penalty)."""
    F, sq = span_coordinates(K, np.flatnonzero(train))
    scores = [(predict(fit_softmax(F[train], y[train], n_classes, lam, sq), F[val]) == y[val]).mean()
              for lam in LAMBDAS]
    lam = LAMBDAS[int(np.argmax(scores))]
    both = train | val
    F, sq = span_coordinates(K, np.flatnonzero(both))
    return fit_softmax(F[both], y[both], n_classes, lam, sq), F, lam


def cross_validate(features, y, folds, n_classes):
    """Accuracy on each held-out fold, the penalty chosen for each, and the
    prediction for every passage (made when its fold was held out).
    ``features(train_mask)`` gives the feature matrix (it may depend on the
    training passages, e.g. a vocabulary); the validation fold is the one
    after the test fold."""
    accuracies, lams, predicted, last = [], [], np.empty_like(y), (None, None)
    for k in range(N_FOLDS):
        test = folds == k
        val = folds == (k + 1) % N_FOLDS
        train = ~test & ~val
        X = features(train | val)
        if X is not last[0]:
            X32 = X.astype(np.float32)
            K = (X32 @ X32.T).astype(np.float64)
            # one scale factor for all features (mean squared norm 1), so that one
            # penalty grid suits every feature set; channel scales are untouched
            last = (X, K / K.diagonal().mean())
        weights, F, lam = fit_with_validation(last[1], y, n_classes, train, val)
        predicted[test] = predict(weights, F[test])
        accuracies.append(float((predicted[test] == y[test]).mean()))
        lams.append(lam)
    return accuracies, lams, predicted


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------


def embedding_features(states, model, parts, normalisation, stats):
    """``features(train_mask)`` of one configuration."""
    if parts == "mean":
        shaped = states.reshape(len(states), model.n_layer * 5, model.n_embed)
        fixed = shaped.mean(axis=1).astype(np.float64)
        return lambda train: fixed
    raw = from_state(states, model.n_layer, model.n_embed, parts).astype(np.float64)
    if normalisation is None:
        return lambda train: raw
    if normalisation == "corpus":
        fixed = stats.normalise(raw, parts).astype(np.float64)
        return lambda train: fixed

    def train_normalised(train):
        running = RunningStats(raw.shape[1])
        running.update(raw[train])
        local = EmbedStats(stats.model_info, Parts.parse(parts), running.mean, running.std)
        return local.normalise(raw, parts).astype(np.float64)
    return train_normalised


WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")


def bag_of_words_features(texts):
    words = [collections.Counter(WORD_RE.findall(t.lower())) for t in texts]

    def features(train):
        counts = collections.Counter()
        for i in np.flatnonzero(train):
            counts.update(words[i].keys())
        vocab = {w: j for j, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}
        X = np.zeros((len(texts), len(vocab)))
        for i, bag in enumerate(words):
            for w, c in bag.items():
                if w in vocab:
                    X[i, vocab[w]] = np.log1p(c)
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return features


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def play_passages(tokenizer, name, n_tokens):
    tokens = np.asarray(tokenizer.encode((DATA / (name + ".txt")).read_text(encoding="utf-8")), dtype=np.uint32)
    n = tokens.size // n_tokens
    return tokens[: n * n_tokens].reshape(n, n_tokens)


def states_of(model, passages, label, cache):
    """Final states of the passages (each from the initial state), cached in
    ``cache``.  One pass serves every configuration: ``embedding.from_state``
    selects the parts of each (``model.embed(text, parts=...)`` would read
    every passage again for each)."""
    if os.path.exists(cache):
        with np.load(cache) as saved:
            if saved["tokens"].shape == np.shape(passages) and (saved["tokens"] == passages).all():
                return saved["states"]
    bar = Progress("%s: %d passages" % (label, len(passages)))
    out = np.empty((len(passages), model.state_len), dtype=np.float32)
    for i, tokens in enumerate(passages):
        _, out[i] = model.eval_sequence(tokens, logits=False)
        bar.update((i + 1) / len(passages))
    bar.close()
    np.savez(cache, tokens=np.asarray(passages), states=out)
    return out


def play_task(model, tokenizer, n_tokens):
    passages, labels, folds = [], [], []
    for c, name in enumerate(PLAYS):
        chunks = play_passages(tokenizer, name, n_tokens)
        passages.extend(chunks)
        labels += [c] * len(chunks)
        folds += list(np.arange(len(chunks)) * N_FOLDS // len(chunks))  # contiguous blocks by position
    return passages, np.array(labels), np.array(folds)


def genre_task(model, tokenizer, n_tokens):
    passages, labels, folds = [], [], []
    for c, (genre, plays) in enumerate(GENRES.items()):
        for j, name in enumerate(plays):
            chunks = play_passages(tokenizer, name, n_tokens)
            pick = np.linspace(0, len(chunks) - 1, min(GENRE_PASSAGES_PER_PLAY, len(chunks))).round().astype(int)
            passages.extend(chunks[pick])
            labels += [c] * len(pick)
            folds += [j % N_FOLDS] * len(pick)  # whole plays per fold, genres spread over the folds
    return passages, np.array(labels), np.array(folds)


# ---------------------------------------------------------------------------


def collect_stats(model, tokenizer, n_tokens, n_passages, path):
    """Normalisation statistics from the STATS_CORPUS texts, the same as
    ``python -m rwkv_cpp.embed_stats MODEL CORPUS... -o PATH --passage-tokens N``."""
    corpus = [DATA / (name + ".txt") for name in STATS_CORPUS]
    passages = embed_stats.corpus_passages(tokenizer, corpus, n_tokens, n_passages)
    bar = Progress("statistics: %d passages" % len(passages))
    stats = embed_stats.collect(model, [p[2] for p in passages], progress=bar.update, sources=corpus)
    bar.close()
    stats.save(path)
    return stats


def run_task(model, tokenizer, task, stats, args):
    """``{label: {"accuracy": [per fold], "penalty": [per fold]}}`` for the
    baseline and every configuration, and the task's description."""
    build = {"play": play_task, "genre": genre_task}[task]
    passages, labels, folds = build(model, tokenizer, args.passage_tokens)
    n_classes = labels.max() + 1
    cache = os.path.join(args.workdir, "states-%s-%d-%s.npz"
                         % (task, args.passage_tokens, stats.model_info["fingerprint"][:12]))
    states = states_of(model, passages, task, cache)
    texts = [tokenizer.decode(p) for p in passages]
    candidates = [("bag of words (baseline)", bag_of_words_features(texts))]
    candidates += [(label, embedding_features(states, model, parts, normalisation, stats))
                   for label, parts, normalisation in CONFIGS]
    rows = {}
    for label, features in candidates:
        accuracy, penalty, predicted = cross_validate(features, labels, folds, n_classes)
        per_class = [float((predicted[labels == c] == c).mean()) for c in range(n_classes)]
        rows[label] = {"accuracy": accuracy, "penalty": penalty, "per_class": per_class}
        print("%s | %-60s %.3f" % (task, label, np.mean(accuracy)), flush=True)
    majority = np.bincount(labels).max() / labels.size
    classes = list(PLAYS) if task == "play" else list(GENRES)
    return {"rows": rows, "n_passages": len(passages), "majority": float(majority), "classes": classes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passage-tokens", type=int, default=128)
    ap.add_argument("--stats-passages", type=int, default=1000, help="passages for the normalisation statistics")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rwkv_cpp_embedding_classifier"),
                    help="where the statistics, cached states and results go (default: %(default)s)")
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit("this example needs the Shakespeare texts in %s (the shared data folder)" % DATA)
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.perf_counter()
    with rwkv_cpp.Model.default(n_threads=args.threads) as model:
        tokenizer = for_model(model)
        stats = collect_stats(model, tokenizer, args.passage_tokens, args.stats_passages,
                              os.path.join(args.workdir, "demo-%d.stats" % args.passage_tokens))
        results = {task: run_task(model, tokenizer, task, stats, args) for task in ("play", "genre")}
        dims = {label: (Parts.parse(p).dim(model.n_layer, model.n_embed) if p != "mean" else model.n_embed)
                for label, p, _ in CONFIGS}
    table = render_table(results, dims, args, time.perf_counter() - t0)
    print(table)
    stem = os.path.join(args.workdir, "results-%d" % args.passage_tokens)
    with open(stem + ".md", "w") as f:
        f.write(table)
    with open(stem + ".json", "w") as f:
        json.dump(results, f, indent=1)


def render_table(results, dims, args, seconds):
    play, genre = results["play"], results["genre"]
    lines = ["Passages of %d tokens; accuracy = mean over %d held-out folds (lowest and highest fold in brackets)."
             % (args.passage_tokens, N_FOLDS),
             "play: %d passages of %s; genre: %d passages of %d plays." % (
                 play["n_passages"], ", ".join(PLAYS), genre["n_passages"], sum(map(len, GENRES.values()))),
             "%s; %s, %d CPUs; %.0f s." % (datetime.date.today().isoformat(), cpu_name(), os.cpu_count(), seconds),
             "", "| features | dim | play (%d plays) | genre (%d classes, unseen plays) |" % (len(PLAYS), len(GENRES)),
             "| --- | --- | --- | --- |"]
    for label in play["rows"]:
        cells = []
        for task in (play, genre):
            accs = task["rows"][label]["accuracy"]
            cells.append("%.1f%% (%.0f-%.0f)" % (100 * np.mean(accs), 100 * min(accs), 100 * max(accs)))
        lines.append("| %s | %s | %s |" % (label, dims.get(label, "vocabulary"), " | ".join(cells)))
    lines.append("| majority class | | %.1f%% | %.1f%% |" % (100 * play["majority"], 100 * genre["majority"]))
    lines += ["", "Accuracy per class (every passage predicted once, when its fold was held out):", "",
              "| features | %s |" % " | ".join([c + ("*" if c in HELD_OUT_OF_LM else "") for c in play["classes"]]
                                               + genre["classes"]),
              "| --- |" + " --- |" * (len(play["classes"]) + len(genre["classes"]))]
    for label in ("bag of words (baseline)", CONFIGS[0][0]):
        cells = ["%.0f%%" % (100 * a) for a in play["rows"][label]["per_class"] + genre["rows"][label]["per_class"]]
        lines.append("| %s | %s |" % (label, " | ".join(cells)))
    lines += ["", "\\* not in the demo model's training data."]
    return "\n".join(lines) + "\n"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
