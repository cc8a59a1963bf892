"""llama.cpp's RWKV-6 and RWKV-7 GGUF layout, both ways.

One table per version (:data:`LAYER_RULES`) maps each llama.cpp tensor
(``blk.N.time_mix_*``, ``channel_mix_*``, ...) to the official tensor(s)
it holds and says how the data differs; docs/FORMAT.md lists them.  The
transforms of llama.cpp's converter (convert_hf_to_gguf's Rwkv6Model and
Rwkv7Model) undone when reading, redone when writing:

- ``FUSED``: the token-shift mixes stacked into one (n, 1, 1, D) tensor
  (v6: w, k, v, r, g; v7: r, w, k, v, a, g);
- ``TRANSPOSE``: LoRA matrices stored (out, in) (v6 ``time_maa_w1``,
  ``time_decay_w1/w2``; v7 ``w1/w2``, ``a1/a2``, ``v1/v2``, ``g1/g2``);
  ``W2``: v6 ``time_maa_w2`` (5, E, D) stored (5, D, E);
- ``VECTOR``: (1, 1, D) parameters stored (D); ``HEADS``: v7 ``r_k`` (H, N)
  stored flat (D);
- ``RESCALED``: v6 ``att.output`` and ``ffn.value`` of layer i divided by
  ``2 ** (i // rescale_every)`` (the graph halves the residual stream every
  ``rescale_every`` layers instead); multiplied back (exact: powers of 2);
- ln0 kept apart (``token_embd_norm``), the decays raw (both graphs
  compute them per token), v7 layer 0's unused value LoRA filled with
  copies of its ``a`` LoRA (llama.cpp requires the tensors).

Reading (:func:`open_llama_gguf`) gives a :class:`Checkpoint` with official
names, which the converter turns into an rwkv_cpp file; writing
(:func:`write_llama_gguf`) makes a file llama.cpp loads.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ConvertError, UnsupportedVersionError
from .gguf_constants import GGMLType, GGUFValueType
from .gguf_reader import PLAIN_TYPES, GGUFContents, read_gguf, read_tensor, type_name
from .gguf_writer import GGUFWriter
from .model import WkvParams
from .tensors import Checkpoint, SourceTensor, raw_to_f32
from .transforms import OutTensor, to_matrix_type

#: general.architecture -> RWKV version, for the architectures read here.
LLAMA_ARCHITECTURES = {"rwkv6": "6.0", "rwkv7": "7.0"}

SAME, VECTOR, TRANSPOSE, W2, HEADS, FUSED, RESCALED = (
    "same", "vector", "transpose", "w2", "heads", "fused", "rescaled")


@dataclass(frozen=True)
class Rule:
    """A llama.cpp tensor (``{i}``: the layer), the official tensor(s) it
    holds (several for FUSED, in stacking order) and the transform."""

    llama: str
    official: Tuple[str, ...]
    kind: str = SAME


def _r(llama: str, official, kind: str = SAME) -> Rule:
    return Rule(llama, (official,) if isinstance(official, str) else tuple(official), kind)


TOP_RULES = [_r("token_embd.weight", "emb.weight"),
             _r("token_embd_norm.weight", "blocks.0.ln0.weight"),
             _r("token_embd_norm.bias", "blocks.0.ln0.bias"),
             _r("output_norm.weight", "ln_out.weight"), _r("output_norm.bias", "ln_out.bias"),
             _r("output.weight", "head.weight")]


def _common(ffn_rescaled: str) -> List[Rule]:
    b, o = "blk.{i}.", "blocks.{i}."
    rules = [_r(b + f"attn_norm.{p}", o + f"ln1.{p}") for p in ("weight", "bias")]
    rules += [_r(b + f"attn_norm_2.{p}", o + f"ln2.{p}") for p in ("weight", "bias")]
    rules += [_r(b + f"time_mix_ln.{p}", o + f"att.ln_x.{p}") for p in ("weight", "bias")]
    rules += [_r(b + f"time_mix_{m}.weight", o + f"att.{m}.weight") for m in ("key", "value", "receptance")]
    rules += [_r(b + "time_mix_output.weight", o + "att.output.weight", ffn_rescaled),
              _r(b + "channel_mix_key.weight", o + "ffn.key.weight"),
              _r(b + "channel_mix_value.weight", o + "ffn.value.weight", ffn_rescaled)]
    return rules


def _v6_rules() -> List[Rule]:
    b, o = "blk.{i}.", "blocks.{i}.att."
    rules = _common(RESCALED)
    rules += [_r(b + "time_mix_gate.weight", o + "gate.weight"),
              _r(b + "time_mix_lerp_x.weight", o + "time_maa_x", VECTOR),
              _r(b + "time_mix_lerp_fused.weight", [o + f"time_maa_{m}" for m in "wkvrg"], FUSED),
              _r(b + "time_mix_w1.weight", o + "time_maa_w1", TRANSPOSE),
              _r(b + "time_mix_w2.weight", o + "time_maa_w2", W2),
              _r(b + "time_mix_decay.weight", o + "time_decay", VECTOR),
              _r(b + "time_mix_decay_w1.weight", o + "time_decay_w1", TRANSPOSE),
              _r(b + "time_mix_decay_w2.weight", o + "time_decay_w2", TRANSPOSE),
              _r(b + "time_mix_first.weight", o + "time_faaaa"),
              _r(b + "channel_mix_lerp_k.weight", "blocks.{i}.ffn.time_maa_k", VECTOR),
              _r(b + "channel_mix_lerp_r.weight", "blocks.{i}.ffn.time_maa_r", VECTOR),
              _r(b + "channel_mix_receptance.weight", "blocks.{i}.ffn.receptance.weight")]
    return rules


def _v7_rules() -> List[Rule]:
    b, o = "blk.{i}.", "blocks.{i}.att."
    rules = _common(SAME)
    rules += [_r(b + "time_mix_lerp_fused.weight", [o + f"x_{m}" for m in "rwkvag"], FUSED),
              _r(b + "time_mix_k_k.weight", o + "k_k", VECTOR),
              _r(b + "time_mix_k_a.weight", o + "k_a", VECTOR),
              _r(b + "time_mix_r_k.weight", o + "r_k", HEADS),
              _r(b + "channel_mix_lerp_k.weight", "blocks.{i}.ffn.x_k", VECTOR)]
    for lora in "wavg":
        if lora != "g":
            rules.append(_r(b + f"time_mix_{lora}0.weight", o + f"{lora}0", VECTOR))
        rules += [_r(b + f"time_mix_{lora}{j}.weight", o + f"{lora}{j}", TRANSPOSE) for j in (1, 2)]
    return rules


#: the per-layer rules of each version.
LAYER_RULES = {"6.0": _v6_rules(), "7.0": _v7_rules()}
#: v7 layer 0: llama.cpp's file has a value LoRA there (copies of the ``a``
#: LoRA, unused): ignored when reading, written as such.
V7_LAYER0_DUMMIES = {"blk.0.time_mix_v0.weight": "blocks.0.att.a0",
                     "blk.0.time_mix_v1.weight": "blocks.0.att.a1",
                     "blk.0.time_mix_v2.weight": "blocks.0.att.a2"}


V7_VALUE_LORA = ("blocks.{i}.att.v0", "blocks.{i}.att.v1", "blocks.{i}.att.v2")


def layout_rules(version: str, n_layer: int) -> List[Rule]:
    """Every rule of a model of ``n_layer`` layers, ``{i}`` filled in (v7
    layer 0 without its value LoRA)."""
    rules = list(TOP_RULES)
    for i in range(n_layer):
        for r in LAYER_RULES[version]:
            if version == "7.0" and i == 0 and r.official[0] in V7_VALUE_LORA:
                continue
            rules.append(Rule(r.llama.format(i=i), tuple(n.format(i=i) for n in r.official), r.kind))
    return rules


def rescale_factor(name: str, rescale_every: int) -> float:
    """2 ** (layer // rescale_every) for a RESCALED tensor of layer ``layer``."""
    if rescale_every <= 0:
        return 1.0
    layer = int(re.match(r"^(?:blk|blocks)\.([0-9]+)\.", name).group(1))
    return float(2 ** (layer // rescale_every))


# -- reading --------------------------------------------------------------------

def is_llama_gguf(path: str) -> bool:
    """Whether a file is a GGUF file without rwkv_cpp's metadata (a llama.cpp
    file, of any architecture).  Unreadable files: False (their reader reports them)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return False
        return llama_architecture(read_gguf(path)) is not None
    except (OSError, ConvertError):
        return False


#: architectures only rwkv_cpp writes: such a file without rwkv.format_version
#: is a damaged rwkv_cpp file (the runtime reports the missing key).
RWKV_CPP_ONLY_ARCHITECTURES = ("rwkv4", "rwkv5")


def llama_architecture(contents: GGUFContents) -> Optional[str]:
    """general.architecture of a file of another program (llama.cpp's: no
    ``rwkv.format_version`` key); None for an rwkv_cpp file."""
    arch = contents.metadata.get("general.architecture")
    if "rwkv.format_version" in contents.metadata or arch in RWKV_CPP_ONLY_ARCHITECTURES:
        return None
    return arch if isinstance(arch, str) else "(none)"


def _key(contents: GGUFContents, arch: str, name: str, default=None):
    value = contents.metadata.get(f"{arch}.{name}", default)
    if value is None:
        raise ConvertError(f"{contents.path}: missing metadata key '{arch}.{name}'")
    return value


def _source(path: str, info, name: str, shape: tuple, transform) -> SourceTensor:
    """A lazy official tensor computed from one llama.cpp tensor; the
    transforms only move data (BF16 stays bits)."""
    dtype = PLAIN_TYPES[info.ggml_type][0]
    load = (lambda: read_tensor(path, info)) if transform is None else \
        (lambda: transform(read_tensor(path, info)))
    return SourceTensor(name, shape, dtype, load)


def _rescaled(path: str, info, name: str, factor: float) -> SourceTensor:
    """A RESCALED tensor times ``factor`` (a power of 2: exact), as F32."""
    dtype = PLAIN_TYPES[info.ggml_type][0]
    return SourceTensor(name, info.shape, "F32",
                        lambda: raw_to_f32(read_tensor(path, info), dtype) * np.float32(factor))


def _official_tensors(path: str, info, rule: Rule, rescale_every: int, n_head: int) -> Dict[str, SourceTensor]:
    """The official tensor(s) of one llama.cpp tensor, loaded lazily."""
    shape, kind = info.shape, rule.kind
    if kind == FUSED:
        n = len(rule.official)
        if int(np.prod(shape)) % n:
            raise ConvertError(f"{path}: tensor '{info.name}' of shape {shape} does not hold {n} vectors")
        d = int(np.prod(shape)) // n
        return {name: _source(path, info, name, (1, 1, d), lambda a, j=j: a.reshape(n, d)[j].reshape(1, 1, d))
                for j, name in enumerate(rule.official)}
    name = rule.official[0]
    if kind in (TRANSPOSE, W2):
        if len(shape) != (2 if kind == TRANSPOSE else 3):
            raise ConvertError(f"{path}: tensor '{info.name}' has shape {shape}")
        return {name: _source(path, info, name, shape[:-2] + (shape[-1], shape[-2]),
                              lambda a: np.ascontiguousarray(np.swapaxes(a, -1, -2)))}
    if kind == HEADS:
        d = int(np.prod(shape))
        if n_head <= 0 or d % n_head:
            raise ConvertError(f"{path}: tensor '{info.name}' of {d} values is not {n_head} heads")
        return {name: _source(path, info, name, (n_head, d // n_head), lambda a: a.reshape(n_head, -1))}
    factor = rescale_factor(name, rescale_every) if kind == RESCALED else 1.0
    if factor != 1.0:
        return {name: _rescaled(path, info, name, factor)}
    return {name: _source(path, info, name, shape, None)}


def _hyper(contents: GGUFContents, arch: str) -> Tuple[int, int]:
    """(rescale_every, n_head) from the metadata."""
    head_size = _key(contents, arch, "wkv.head_size")
    n_embd = _key(contents, arch, "embedding_length")
    if not isinstance(head_size, int) or head_size <= 0 or n_embd % head_size:
        raise ConvertError(f"{contents.path}: {arch}.wkv.head_size {head_size} does not divide "
                           f"the embedding length {n_embd}")
    rescale = contents.metadata.get(f"{arch}.rescale_every_n_layers", 0) if arch == "rwkv6" else 0
    return (rescale if isinstance(rescale, int) and rescale > 0 else 0), n_embd // head_size


def open_llama_gguf(path: str, world_vocab: Optional[str] = None) -> Checkpoint:
    """A llama.cpp RWKV-6/7 GGUF file as a checkpoint with official names;
    its metadata's ``llama_tokenizer`` is :func:`tokenizer_of` the file.

    Raises:
        ConvertError: another architecture (named), a quantized tensor
            (named, with its type), a tensor missing or unknown.
    """
    path = str(path)
    contents = read_gguf(path)
    arch = llama_architecture(contents)
    if arch not in LLAMA_ARCHITECTURES:
        raise UnsupportedVersionError(f"{path}: a llama.cpp GGUF file of architecture '{arch}'; rwkv_cpp runs "
                           "RWKV models: its own files and llama.cpp's 'rwkv6' and 'rwkv7' files")
    version = LLAMA_ARCHITECTURES[arch]
    n_layer = _key(contents, arch, "block_count")
    if not isinstance(n_layer, int) or not 0 < n_layer <= len(contents.tensors):
        raise ConvertError(f"{path}: {arch}.block_count {n_layer!r} is impossible")
    rescale_every, n_head = _hyper(contents, arch)
    tensors: Dict[str, SourceTensor] = {}
    known = set(V7_LAYER0_DUMMIES) if version == "7.0" else set()
    for rule in layout_rules(version, n_layer):
        info = contents.tensors.get(rule.llama)
        if info is None:
            raise ConvertError(f"{path}: missing tensor '{rule.llama}' of an {arch} file")
        if info.ggml_type not in PLAIN_TYPES:
            raise ConvertError(f"{path}: tensor '{rule.llama}' is {type_name(info.ggml_type)}: quantized "
                               "llama.cpp files are not supported; use an F32, F16 or BF16 file")
        tensors.update(_official_tensors(path, info, rule, rescale_every, n_head))
        known.add(rule.llama)
    unknown = sorted(set(contents.tensors) - known)
    if unknown:
        raise ConvertError(f"{path}: unexpected tensors in an {arch} file: {', '.join(unknown[:8])}")
    meta = {"llama_architecture": arch, "llama_tokenizer": tokenizer_of(contents.metadata, world_vocab),
            "matrix_type": type_name(contents.tensors["token_embd.weight"].ggml_type)}
    return Checkpoint(path, "llama_gguf", tensors, meta)


# -- the World vocabulary as llama.cpp stores it ----------------------------------

_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\", "'": b"'", '"': b'"'}


def unescape_token(text: str) -> bytes:
    """The bytes of a token as llama.cpp's converter stores it: the text of
    Python's ``repr(bytes)`` (``\\xNN``, ``\\n``, ``\\t``, ``\\r``, ``\\\\``, ``\\'``)."""
    out, i, raw = bytearray(), 0, text.encode("utf-8")
    while i < len(raw):
        c = raw[i:i + 1]
        if c == b"\\" and i + 1 < len(raw):
            nxt = chr(raw[i + 1])
            hex_digits = raw[i + 2:i + 4]
            if nxt == "x" and len(hex_digits) == 2 and all(chr(h) in "0123456789abcdefABCDEF" for h in hex_digits):
                out += bytes([int(hex_digits, 16)])
                i += 4
                continue
            if nxt in _ESCAPES:
                out += _ESCAPES[nxt]
                i += 2
                continue
        out += c
        i += 1
    return bytes(out)


def escape_token(token: bytes) -> str:
    """The inverse of :func:`unescape_token` (what llama.cpp's converter writes)."""
    return repr(bytes(token))[2:-1]


def read_world_vocab(path: str) -> List[bytes]:
    """The tokens (ids 1, 2, ...) of the World vocabulary file, as bytes."""
    tokens = []
    with open(path, "r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(" ")
            try:
                token = ast.literal_eval(" ".join(parts[1:-1]))
            except (ValueError, SyntaxError):
                raise ConvertError(f"{path}:{line_no}: not a World vocabulary line") from None
            tokens.append(token.encode("utf-8") if isinstance(token, str) else bytes(token))
    return tokens


def tokenizer_of(metadata: Mapping, world_vocab: Optional[str] = None) -> str:
    """The rwkv.tokenizer of a llama.cpp file: 'world' when its tokens are
    the World vocabulary (llama.cpp's ``rwkv`` tokenizer model, 65536
    tokens: ``<s>`` then the World tokens); compared token by token with the
    vocabulary file ``world_vocab`` when given.  '' (none) otherwise."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if metadata.get("tokenizer.ggml.model") != "rwkv" or not isinstance(tokens, list) or len(tokens) != 65536:
        return ""
    if world_vocab is None:
        return "world"
    world = read_world_vocab(world_vocab)
    same = len(world) < len(tokens) and all(unescape_token(t) == w for t, w in zip(tokens[1:], world))
    return "world" if same else ""


# -- writing ----------------------------------------------------------------------

def _llama_data(get, rule: Rule) -> np.ndarray:
    """The llama.cpp tensor of one rule; ``get(name)`` gives an official
    tensor as float32."""
    arrays = [get(n) for n in rule.official]
    a = arrays[0]
    if rule.kind == FUSED:
        return np.stack([x.reshape(-1) for x in arrays]).reshape(len(arrays), 1, 1, -1)
    if rule.kind in (TRANSPOSE, W2):
        return np.ascontiguousarray(np.swapaxes(a, -1, -2))
    if rule.kind in (VECTOR, HEADS):
        return a.reshape(-1)
    return a


def _llama_shape(shapes: Mapping[str, tuple], rule: Rule) -> tuple:
    """The shape :func:`_llama_data` gives, from the official shapes."""
    shape = tuple(shapes[rule.official[0]])
    numel = int(np.prod(shape))
    if rule.kind == FUSED:
        return (len(rule.official), 1, 1, numel)
    if rule.kind in (TRANSPOSE, W2):
        return shape[:-2] + (shape[-1], shape[-2])
    if rule.kind in (VECTOR, HEADS):
        return (numel,)
    return shape


def llama_metadata(hp: WkvParams, file_type: int) -> List[Tuple[str, GGUFValueType, object]]:
    """The keys llama.cpp's loader reads for an ``rwkv6``/``rwkv7`` model,
    with the values llama.cpp's converter writes."""
    arch = {"6.0": "rwkv6", "7.0": "rwkv7"}[hp.version]
    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    keys = [("general.architecture", GGUFValueType.STRING, arch),
            (f"{arch}.context_length", u32, 1048576),  # RWKV is not context-limited
            (f"{arch}.embedding_length", u32, hp.n_embed), (f"{arch}.block_count", u32, hp.n_layer),
            (f"{arch}.attention.layer_norm_epsilon", f32, 1e-5),
            (f"{arch}.wkv.head_size", u32, hp.head_size),
            (f"{arch}.feed_forward_length", u32, hp.n_ffn),
            (f"{arch}.attention.head_count", u32, 0),  # required by llama.cpp, unused
            ("general.file_type", u32, file_type)]
    if hp.version == "6.0":
        keys += [(f"{arch}.time_mix_extra_dim", u32, hp.rank("time_mix")),
                 (f"{arch}.time_decay_extra_dim", u32, hp.rank("time_decay")),
                 (f"{arch}.rescale_every_n_layers", u32, 0)]
    else:
        keys += [(f"{arch}.attention.decay_lora_rank", u32, hp.rank("decay")),
                 (f"{arch}.attention.iclr_lora_rank", u32, hp.rank("a")),
                 (f"{arch}.attention.value_residual_mix_lora_rank", u32, hp.rank("v")),
                 (f"{arch}.attention.gate_lora_rank", u32, hp.rank("gate"))]
    return keys


#: token types of llama.cpp's vocabularies (enum llama_token_type).
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


def tokenizer_metadata(world: Sequence[bytes], n_vocab: int) -> List[Tuple[str, GGUFValueType, object]]:
    """llama.cpp's ``rwkv`` tokenizer keys: ``<s>``, the World tokens (cut to
    n_vocab), ``[PADn]`` up to n_vocab; bos = eos = 0, eot = 261 (``\\n\\n``)."""
    tokens = ["<s>"] + [escape_token(t) for t in world[:n_vocab - 1]]
    types = [TOKEN_CONTROL] + [TOKEN_NORMAL] * (len(tokens) - 1)
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    types += [TOKEN_UNUSED] * (n_vocab - len(types))
    keys = [("tokenizer.ggml.model", GGUFValueType.STRING, "rwkv"),
            ("tokenizer.ggml.tokens", GGUFValueType.ARRAY, (GGUFValueType.STRING, tokens)),
            ("tokenizer.ggml.token_type", GGUFValueType.ARRAY, (GGUFValueType.INT32, types)),
            ("tokenizer.ggml.bos_token_id", GGUFValueType.UINT32, 0),
            ("tokenizer.ggml.eos_token_id", GGUFValueType.UINT32, 0)]
    if n_vocab > 261:
        keys.append(("tokenizer.ggml.eot_token_id", GGUFValueType.UINT32, 261))
    return keys


def _export_rules(hp: WkvParams) -> List[Rule]:
    rules = layout_rules(hp.version, hp.n_layer)
    if hp.version == "7.0":
        rules += [Rule(name, (src,), VECTOR if src.endswith("0") else TRANSPOSE)
                  for name, src in V7_LAYER0_DUMMIES.items()]
    return rules


def plan_llama(tensors: Mapping[str, SourceTensor], hp: WkvParams, matrix_type: GGMLType) -> List[OutTensor]:
    """The tensors of a llama.cpp file of official tensors, produced one at
    a time: the matrices (2-D, and v6's 3-D time_maa_w2) in the matrix type,
    the vectors and the fused mixes F32 (as llama.cpp's converter does)."""
    if hp.version not in LAYER_RULES:
        raise ConvertError(f"llama.cpp runs RWKV-6 and RWKV-7 models; this is RWKV-{hp.version}")
    shapes = {name: t.shape for name, t in tensors.items()}
    get = lambda name: tensors[name].to_f32()  # noqa: E731
    plan = []
    for rule in _export_rules(hp):
        shape = _llama_shape(shapes, rule)
        ggml_type = matrix_type if len(shape) in (2, 3) else GGMLType.F32
        plan.append(OutTensor(rule.llama, shape, ggml_type,
                              lambda rule=rule, t=ggml_type: to_matrix_type(rule.llama, _llama_data(get, rule), t)))
    return plan


def add_llama_metadata(writer: GGUFWriter, hp: WkvParams, file_type: int, world: Sequence[bytes]) -> None:
    """The metadata of a llama.cpp ``rwkv6``/``rwkv7`` file (model and tokenizer keys)."""
    for key, vtype, value in llama_metadata(hp, file_type) + tokenizer_metadata(world, hp.n_vocab):
        writer.add(key, vtype, value)
