"""Sentence embeddings from the final recurrent state of an RWKV-4 model.

After reading a text, an RWKV model's whole memory of it is its state: per
layer ``i`` five vectors of ``n_embed`` (D) floats, in this order::

    att_xx  the time-mixing block's input for the last token (after LayerNorm)
    aa      WKV numerator   sum over past tokens t of exp(k_t - decay*age) * v_t,
                            scaled by exp(-pp)
    bb      WKV denominator sum over past tokens t of exp(k_t - decay*age),
                            scaled by exp(-pp)
    pp      the running maximum exponent that keeps aa and bb finite
    ffn_xx  the channel-mixing block's input for the last token

Their ranges differ wildly (on the demo model after 128 tokens: xx about
+-3, aa up to +-100, bb from 1 to 60, pp a log-scale number), so they are
never averaged together.  An embedding is a *selection* of these vectors,
concatenated, and optionally z-scored per channel with statistics collected
over varied text (``python -m rwkv_cpp.embed_stats``).

Parts (``Parts``) name what is selected:

- the five stored vectors above, by name;
- ``wkv`` = aa / bb, derived: the decay-weighted average of the values v
  the layer has seen.  It is scale-free (exp(-pp) cancels) and bounded by
  the values' range, so it carries aa and bb's content without pp.
- a layer selection (default: every layer).

The vector is laid out layer by layer and, within a layer, part by part in
the canonical order ``att_xx, aa, bb, pp, wkv, ffn_xx`` (the time-mixing
block's vectors, then the channel-mixing block's), D floats each.

Normalisation (``EmbedStats.normalise``): ``z = (x - mean) / scale`` with
``scale = sqrt(std**2 + floor**2)`` per channel, where ``floor = EPS_REL *
median(std)`` over the D channels of the same (layer, part) block.  The floor
guards against channels that barely moved in the statistics corpus (the
demo model has bb channels of std 0 and 1e-8, where one float32 rounding
step would be a z-score of 10): without it they would dominate any distance
or linear model; with it such a channel is scaled like a channel of 1% of
its block's typical spread, while channels at or above the block's median
std are scaled by 1/std to within 0.005%.  A channel whose whole block was
constant (median std 0, so floor 0) and that was itself constant gets
weight 0: the corpus says nothing about how large a deviation there would
be.

The default parts were chosen by measurement on the bundled demo model
(``examples/embedding_classifier.py``, table in docs/EMBEDDING.md).
"""

import datetime
import functools
import os
import re
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ._lib import lib
from .errors import InvalidArgumentError, UnsupportedModelError
from .sidecar import MODEL_KEYS, SidecarFormat, model_fingerprint, model_record, same_file, shape_differences
from .tokenizers import for_model

#: the vectors stored per layer in an RWKV-4 state, in state order.
STATE_PARTS = ("att_xx", "aa", "bb", "pp", "ffn_xx")
#: every part name, in the canonical order of the embedding layout.
PART_NAMES = ("att_xx", "aa", "bb", "pp", "wkv", "ffn_xx")
#: the default selection: established by examples/embedding_classifier.py.
DEFAULT_PARTS = "wkv"
#: every vector of every layer (what ``embed_stats`` collects by default).
ALL_PARTS = ",".join(PART_NAMES)

#: relative floor of the normalisation scale (see the module docstring).
EPS_REL = 1e-2

_SPEC_RE = re.compile(r"^\s*([^@]*?)\s*(?:@\s*(.*?)\s*)?$")


class EmbedStatsError(ValueError):
    """A statistics file that is malformed, belongs to another model, or
    does not cover the requested parts."""


# ---------------------------------------------------------------------------
# Parts: which vectors of which layers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """A selection of state vectors: ``names`` (canonical order, no
    duplicates) and ``layers`` (``None`` = every layer; else layer indices
    or slices as written in the spec, resolved by ``layer_indices``).

    Written as a spec string ``NAMES[@LAYERS]``: ``NAMES`` is a comma list
    of part names or ``all``; ``LAYERS`` a comma list of indices (negative
    counts from the end) and Python slices.  Examples: ``att_xx,wkv,ffn_xx``
    (every layer), ``ffn_xx@-1`` (the last layer), ``wkv@4:`` (layers 4 to
    the end), ``all@0,7``.
    """

    names: Tuple[str, ...]
    layers: Optional[Tuple[object, ...]] = None

    def __post_init__(self):
        names = tuple(self.names) if not isinstance(self.names, str) else (self.names,)
        unknown = [n for n in names if n not in PART_NAMES]
        if unknown or not names:
            raise ValueError("unknown or missing part name(s) %s; the names are: %s"
                             % (", ".join(map(repr, unknown)) or "(none)", ", ".join(PART_NAMES)))
        object.__setattr__(self, "names", tuple(n for n in PART_NAMES if n in names))
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or not all(isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool))
                                     for i in layers):
                raise ValueError("layers must be a non-empty sequence of ints and slices, got %r" % (self.layers,))
            object.__setattr__(self, "layers", layers)

    @classmethod
    def parse(cls, spec):
        """A ``Parts`` from a spec string, a sequence of names or a ``Parts``."""
        if isinstance(spec, Parts):
            return spec
        if isinstance(spec, str):
            match = _SPEC_RE.match(spec)
            names_text, layers_text = match.group(1), match.group(2)
            names = [n.strip() for n in names_text.split(",") if n.strip()]
            layers = None if layers_text in (None, "", "all") else _parse_layers(layers_text, spec)
        else:
            try:
                names = [str(n) for n in spec]
            except TypeError:
                raise ValueError("parts must be a spec string, names or Parts, got %r" % (spec,)) from None
            layers = None
        if names == ["all"]:
            names = list(PART_NAMES)
        try:
            return cls(tuple(names), layers)
        except ValueError as exc:
            raise ValueError("parts %r: %s" % (spec, exc)) from None

    @property
    def spec(self):
        """The spec string of this selection."""
        text = ",".join(self.names)
        if self.layers is not None:
            text += "@" + ",".join(_layer_item_text(item) for item in self.layers)
        return text

    def layer_indices(self, n_layer):
        """The selected layers of a model of ``n_layer`` layers, ascending."""
        if self.layers is None:
            return tuple(range(n_layer))
        chosen = set()
        for item in self.layers:
            if isinstance(item, slice):
                chosen.update(range(n_layer)[item])
            elif -n_layer <= item < n_layer:
                chosen.add(item % n_layer)
            else:
                raise ValueError("layer %d out of range for a model of %d layers (parts %r)"
                                 % (item, n_layer, self.spec))
        if not chosen:
            raise ValueError("parts %r select no layer of a model of %d layers" % (self.spec, n_layer))
        return tuple(sorted(chosen))

    def resolved(self, n_layer):
        """The same selection with explicit layer indices."""
        return Parts(self.names, self.layer_indices(n_layer))

    def dim(self, n_layer, n_embed):
        """Length of the embedding vector."""
        return len(self.layer_indices(n_layer)) * len(self.names) * n_embed

    def blocks(self, n_layer):
        """``(layer, name)`` of each block of n_embed values, in layout order."""
        return [(layer, name) for layer in self.layer_indices(n_layer) for name in self.names]

    def __str__(self):
        return self.spec


def _parse_layers(text, spec):
    items = []
    for piece in text.split(","):
        piece = piece.strip()
        try:
            if ":" in piece:
                bounds = [int(b) if b.strip() else None for b in piece.split(":")]
                if len(bounds) > 3:
                    raise ValueError
                items.append(slice(*bounds))
            else:
                items.append(int(piece))
        except ValueError:
            raise ValueError("bad layer selection %r in parts %r: use indices and slices such as "
                             "'0,3', '-1', '4:' or '::2'" % (piece, spec)) from None
    return tuple(items)


def _layer_item_text(item):
    if isinstance(item, slice):
        text = ":".join("" if b is None else str(b) for b in (item.start, item.stop))
        return text + (":%d" % item.step if item.step is not None else "")
    return str(item)


# ---------------------------------------------------------------------------
# From states to embeddings
# ---------------------------------------------------------------------------


def check_model(model):
    """Raises unless ``model`` has the RWKV-4 state layout embeddings read."""
    if model.version != "4" or model.state_len != len(STATE_PARTS) * model.n_embed * model.n_layer:
        raise UnsupportedModelError(
            lib.RWKV_STATUS_ERROR_UNSUPPORTED,
            "sentence embeddings are defined for the RWKV-4 state layout; this model is RWKV-%s "
            "(state of %d floats)" % (model.version, model.state_len))


def from_state(states, n_layer, n_embed, parts=DEFAULT_PARTS):
    """The raw (unnormalised) embedding of RWKV-4 state(s): ``states`` of
    shape ``(state_len,)`` or ``(n, state_len)`` -> float32 ``(dim,)`` or
    ``(n, dim)``."""
    parts = Parts.parse(parts)
    states = np.asarray(states, dtype=np.float32)
    state_len = len(STATE_PARTS) * n_embed * n_layer
    if states.shape[-1:] != (state_len,) or states.ndim > 2:
        raise ValueError("states must have shape (%d,) or (n, %d), got %s" % (state_len, state_len, states.shape))
    per_layer = states.reshape(states.shape[:-1] + (n_layer, len(STATE_PARTS), n_embed))
    layers = list(parts.layer_indices(n_layer))
    pieces = []
    for name in parts.names:
        if name == "wkv":
            aa = per_layer[..., layers, STATE_PARTS.index("aa"), :]
            bb = per_layer[..., layers, STATE_PARTS.index("bb"), :]
            # bb >= 1 once a token has been read (the largest term is exp(0));
            # only the initial state has bb == 0, and then aa == 0 too.
            pieces.append(np.divide(aa, bb, out=np.zeros_like(aa), where=bb > 0))
        else:
            pieces.append(per_layer[..., layers, STATE_PARTS.index(name), :])
    # (..., layer, part, D) -> layer-major, part-minor layout
    stacked = np.stack(pieces, axis=-2)
    return np.ascontiguousarray(stacked.reshape(states.shape[:-1] + (-1,)), dtype=np.float32)


def embed(model, text_or_tokens, parts=DEFAULT_PARTS, stats=None, *, state=None, tokenizer=None):
    """The embedding of a text (``str`` or ``bytes``, encoded with the
    model's tokenizer or ``tokenizer``) or of token ids: the selected parts
    of the state after reading it from ``state`` (``None``: the initial
    state), z-scored with ``stats`` (an ``EmbedStats`` or the path of a
    statistics file) when given.  float32 vector."""
    check_model(model)
    parts = Parts.parse(parts)
    stats = _stats_for(model, stats)
    vector = _raw_embedding(model, text_or_tokens, parts, state, tokenizer)
    return stats.normalise(vector, parts) if stats is not None else vector


def embed_many(model, texts, parts=DEFAULT_PARTS, stats=None, *, tokenizer=None, progress=None):
    """Embeddings of many texts (or token sequences), each read from the
    initial state: float32 ``(len(texts), dim)``.  ``progress(fraction)`` is
    called after each text."""
    check_model(model)
    parts = Parts.parse(parts)
    stats = _stats_for(model, stats)
    texts = list(texts)
    out = np.empty((len(texts), parts.dim(model.n_layer, model.n_embed)), dtype=np.float32)
    for i, text in enumerate(texts):
        out[i] = _raw_embedding(model, text, parts, None, tokenizer)
        if progress:
            progress((i + 1) / len(texts))
    return stats.normalise(out, parts) if stats is not None else out


def _raw_embedding(model, text_or_tokens, parts, state, tokenizer):
    if isinstance(text_or_tokens, (str, bytes, bytearray, memoryview)):
        tokens = for_model(model, tokenizer).encode(text_or_tokens)
        if not tokens:
            raise InvalidArgumentError(lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT, "nothing to embed: the text is empty")
    else:
        tokens = text_or_tokens
    _, new_state = model.eval_sequence(tokens, state, logits=False)
    return from_state(new_state, model.n_layer, model.n_embed, parts)


def _stats_for(model, stats):
    if stats is None:
        return None
    if not isinstance(stats, EmbedStats):
        stats = _load_cached(_file_key(os.fspath(stats)))
    stats.check(model)
    return stats


@functools.lru_cache(maxsize=8)
def _load_cached(key):
    """A statistics file given by path, read once per (path, size, mtime),
    so that embedding texts one by one does not re-read and re-check it."""
    return EmbedStats.load(key[0])


# ---------------------------------------------------------------------------
# Per-channel statistics and normalisation
# ---------------------------------------------------------------------------


class RunningStats:
    """Per-channel count, mean and variance accumulated in float64 batch by
    batch (Chan et al.'s pairwise update, so a channel with a large mean and
    a small spread keeps its precision)."""

    def __init__(self, dim):
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self._m2 = np.zeros(dim, dtype=np.float64)

    def update(self, batch):
        batch = np.asarray(batch, dtype=np.float64).reshape(-1, self.mean.size)
        k = batch.shape[0]
        if k == 0:
            return
        batch_mean = batch.mean(axis=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(axis=0)
        total = self.count + k
        delta = batch_mean - self.mean
        self.mean += delta * (k / total)
        self._m2 += batch_m2 + delta ** 2 * (self.count * k / total)
        self.count = total

    @property
    def std(self):
        """Population standard deviation (ddof=0)."""
        if self.count == 0:
            raise ValueError("no samples")
        return np.sqrt(self._m2 / self.count)


def normalisation_scale(std, n_embed):
    """The guarded denominators ``sqrt(std**2 + floor**2)``, ``floor =
    EPS_REL * median(std)`` over each block of ``n_embed`` channels."""
    blocks = np.asarray(std, dtype=np.float64).reshape(-1, n_embed)
    floor = EPS_REL * np.median(blocks, axis=1, keepdims=True)
    return np.sqrt(blocks ** 2 + floor ** 2).reshape(-1)


#: the statistics file: a sidecar file (rwkv_cpp.sidecar), see EmbedStats
FORMAT = SidecarFormat(magic=b"RWKVEMBS", version=1, kind="embedding statistics file", error=EmbedStatsError,
                       required=MODEL_KEYS + ("fingerprint", "parts", "dim"), max_header=1 << 20)


class EmbedStats:
    """Per-channel mean and std of the embeddings of ``parts`` (resolved
    layers) of one model, with the record of that model.

    File: a sidecar file (``rwkv_cpp.sidecar``, ``FORMAT``) with::

        magic              b"RWKVEMBS"
        header             the model record (shape, fingerprint, file
                           name), parts (names, layers), dim, n_passages,
                           passage_tokens, sources, created
        float32[dim]       mean
        float32[dim]       std (population)
    """

    def __init__(self, model_info, parts, mean, std, n_passages=0, passage_tokens=0, sources=(), created=None):
        self.model_info = dict(model_info)
        self.parts = Parts.parse(parts).resolved(self.model_info["n_layer"])
        dim = self.parts.dim(self.model_info["n_layer"], self.model_info["n_embed"])
        self.mean = _vector(mean, dim, "mean")
        self.std = _vector(std, dim, "std")
        if not np.all(np.isfinite(self.mean)) or not np.all(np.isfinite(self.std)) or np.any(self.std < 0):
            raise EmbedStatsError("statistics must be finite with std >= 0")
        self.n_passages = int(n_passages)
        self.passage_tokens = int(passage_tokens)
        self.sources = [str(s) for s in sources]
        self.created = created or datetime.date.today().isoformat()
        scale = normalisation_scale(self.std, self.model_info["n_embed"])
        self._inv_scale = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0).astype(np.float32)
        self._verified = set()

    @classmethod
    def from_running(cls, model, parts, running, **info):
        """Statistics of ``model`` from a filled ``RunningStats``."""
        return cls(model_record(model), parts, running.mean, running.std, n_passages=running.count, **info)

    # -- use ----------------------------------------------------------------

    def check(self, model, check_fingerprint=True):
        """Raises ``EmbedStatsError`` unless these statistics were collected
        with ``model`` (same shape and, unless ``check_fingerprint=False``,
        the same file fingerprint).  Remembers models that passed."""
        key = _file_key(model.path)
        if key in self._verified:
            return
        info = self.model_info
        differences = shape_differences(info, model)
        if differences:
            raise EmbedStatsError("these embedding statistics belong to another model (%s): %s"
                                  % (info.get("model", "?"), "; ".join(differences)))
        if check_fingerprint and not same_file(info, model):
            raise EmbedStatsError(
                "these embedding statistics were collected with another model file of the same shape "
                "(%s, fingerprint %s), not %s (fingerprint %s); collect them for this model with "
                "python -m rwkv_cpp.embed_stats, or call stats.check(model, check_fingerprint=False) "
                "to accept them" % (info.get("model", "?"), info["fingerprint"],
                                    os.path.basename(model.path), model_fingerprint(model.path)))
        self._verified.add(key)

    def indices(self, parts):
        """Positions of the channels of ``parts`` in these statistics."""
        n_layer, n_embed = self.model_info["n_layer"], self.model_info["n_embed"]
        parts = Parts.parse(parts)
        where = {block: i for i, block in enumerate(self.parts.blocks(n_layer))}
        missing = [b for b in parts.blocks(n_layer) if b not in where]
        if missing:
            raise EmbedStatsError(
                "the statistics cover parts %r, not %s (requested %r); collect them with "
                "python -m rwkv_cpp.embed_stats --parts %s"
                % (self.parts.spec, ", ".join("%s of layer %d" % (n, l) for l, n in missing[:4])
                   + (" ..." if len(missing) > 4 else ""), parts.spec, parts.spec))
        starts = np.array([where[b] * n_embed for b in parts.blocks(n_layer)], dtype=np.int64)
        return (starts[:, None] + np.arange(n_embed)).reshape(-1)

    def normalise(self, vectors, parts):
        """``(x - mean) * inv_scale`` over the channels of ``parts`` (the
        layout of ``from_state``); float32, any leading batch shape."""
        idx = self.indices(parts)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[-1] != idx.size:
            raise ValueError("vectors of %d values for parts %r, which have %d"
                             % (vectors.shape[-1], Parts.parse(parts).spec, idx.size))
        return ((vectors - self.mean[idx]) * self._inv_scale[idx]).astype(np.float32)

    # -- files --------------------------------------------------------------

    def save(self, path):
        """Writes the statistics to ``path`` atomically."""
        header = dict(self.model_info)
        header.update(parts={"names": list(self.parts.names), "layers": list(self.parts.layers)},
                      dim=int(self.mean.size), n_passages=self.n_passages, passage_tokens=self.passage_tokens,
                      sources=self.sources, created=self.created)
        FORMAT.write(path, header, [self.mean, self.std])

    @classmethod
    def load(cls, path, model=None, check_fingerprint=True):
        """Statistics read from ``path``; checked against ``model`` when given."""
        path = os.fspath(path)
        header, data = FORMAT.read(path)
        _check_header(path, header)
        dim = header["dim"]
        values = FORMAT.floats(path, data, 2 * dim)
        info = {k: header[k] for k in MODEL_KEYS + ("fingerprint", "model") if k in header}
        try:
            stats = cls(info, Parts(tuple(header["parts"]["names"]), tuple(header["parts"]["layers"])),
                        values[:dim], values[dim:], header.get("n_passages", 0), header.get("passage_tokens", 0),
                        header.get("sources", ()), header.get("created"))
        except (ValueError, TypeError, KeyError) as exc:
            raise EmbedStatsError("%s: inconsistent statistics file: %s" % (path, exc)) from None
        if model is not None:
            stats.check(model, check_fingerprint)
        return stats

    def __repr__(self):
        return "<rwkv_cpp.embedding.EmbedStats %s parts=%r dim=%d passages=%d>" % (
            self.model_info.get("model", "?"), self.parts.spec, self.mean.size, self.n_passages)


#: header keys that hold sizes (> 0) and counts (>= 0)
_SIZE_KEYS = ("n_vocab", "n_embed", "n_layer", "state_len")
_COUNT_KEYS = ("dim", "n_passages", "passage_tokens")


def _check_header(path, header):
    """Raises EmbedStatsError unless the sizes and counts of a statistics
    file's header are integers of the right sign and ``parts`` is an object
    (a float such as 4.0 or 1e400, which JSON allows, is refused here)."""
    def integer(value, least):
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    bad = [key for key in _SIZE_KEYS if not integer(header[key], 1)]
    bad += [key for key in _COUNT_KEYS if key in header and not integer(header[key], 0)]
    if not isinstance(header["parts"], dict):
        bad.append("parts")
    if bad:
        raise EmbedStatsError("%s: corrupt header (%s)" % (path, ", ".join(bad)))


def _vector(values, dim, what):
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.size != dim:
        raise EmbedStatsError("%s has %d values, the parts need %d" % (what, values.size, dim))
    return values


def _file_key(path):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)
