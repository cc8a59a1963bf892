"""Convert an official RWKV-4/5/6/7 checkpoint to the rwkv_cpp GGUF file.

Pipeline: open the checkpoint (lazy tensors) -> normalise names -> detect
the version once from all names -> infer hyper-parameters and check every
tensor -> plan the output tensors (name, shape, type, a function producing
the data) -> stream them into a temporary GGUF file -> rename it to the
destination.  docs/FORMAT.md describes the resulting file.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass
from typing import Callable, List, Mapping, Optional

import numpy as np

from .checkpoint import open_checkpoint, sniff_format
from .errors import ConvertError
from .gguf_constants import GGMLType
from .gguf_writer import GGUFWriter
from .keys import normalize_tensors
from .model import (RWKV4Params, check_rwkv4_tensors, check_wkv_tensors, detect_version,
                    infer_rwkv4_params, infer_wkv_params)
from .plan_wkv import LN_X_EPSILON, add_wkv_metadata, plan_wkv
from .tensors import Checkpoint, SourceTensor
from .transforms import (FORMAT_VERSION, LAYER_NORM_EPSILON,  # noqa: F401 (re-exported)
                         OutTensor, decay_transform, emb_with_ln0, layer_norm_f64,  # noqa: F401
                         matrix_of, to_matrix_type, vector_of)

#: enum rwkv_type of rwkv.h -> (general.file_type, ggml type of matrices).
OUTPUT_TYPES = {"FP32": (0, GGMLType.F32), "FP16": (1, GGMLType.F16)}
#: --tokenizer choices -> value of rwkv.tokenizer.
TOKENIZERS = {"20b": "20B", "world": "world", "bytes": "bytes", "none": ""}
#: vocabulary size -> tokenizer assumed when none is given.
DEFAULT_TOKENIZER_BY_VOCAB = {50277: "20B", 65536: "world", 256: "bytes"}

ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ConvertSummary:
    """What :func:`convert_file` wrote."""

    version: str
    n_vocab: int
    n_embed: int
    n_layer: int
    n_att: int
    n_ffn: int
    type: str
    tokenizer: str
    n_tensors: int
    bytes_written: int
    source_format: str
    n_head: int = 0       # RWKV-5 and later
    head_size: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """A one-line human summary."""
        heads = f"n_head={self.n_head} head_size={self.head_size} " if self.n_head else ""
        return (f"RWKV-{self.version} {self.type}: n_vocab={self.n_vocab} "
                f"n_embed={self.n_embed} n_layer={self.n_layer} n_att={self.n_att} "
                f"n_ffn={self.n_ffn} {heads}tokenizer={self.tokenizer or 'none'}, "
                f"{self.n_tensors} tensors, {self.bytes_written / 2**20:.1f} MiB written")


def resolve_output_type(out_type: str):
    """Normalise 'fp32'/'FP16'... -> ('FP32', file_type, matrix ggml type)."""
    key = str(out_type).upper()
    if key not in OUTPUT_TYPES:
        raise ConvertError(f"unknown output type {out_type!r}; choose FP32 or FP16 "
                           "(quantized types are not supported by the converter yet)")
    return (key,) + OUTPUT_TYPES[key]


def resolve_tokenizer(tokenizer: Optional[str], n_vocab: int) -> str:
    """The rwkv.tokenizer value: given, or inferred from n_vocab."""
    if tokenizer is None:
        return DEFAULT_TOKENIZER_BY_VOCAB.get(n_vocab, "")
    key = str(tokenizer).lower()
    if key == "":
        return ""
    if key not in TOKENIZERS:
        raise ConvertError(f"unknown tokenizer {tokenizer!r}; choose one of "
                           "20B, world, bytes, none")
    return TOKENIZERS[key]


# -- plan ------------------------------------------------------------------

def plan_rwkv4(tensors: Mapping[str, SourceTensor], hp: RWKV4Params,
               matrix_type: GGMLType) -> List[OutTensor]:
    """The output tensors of an RWKV-4 file, in file order (see FORMAT.md)."""
    D, A, F32 = hp.n_embed, hp.n_att, GGMLType.F32
    t = tensors
    emb, w0, b0 = t["emb.weight"], t["blocks.0.ln0.weight"], t["blocks.0.ln0.bias"]
    plan = [OutTensor("emb.weight", emb.shape, matrix_type,
                      lambda: to_matrix_type("emb.weight", emb_with_ln0(emb, w0, b0),
                                             matrix_type))]
    for i in range(hp.n_layer):
        p = f"blocks.{i}."
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"):
            plan.append(OutTensor(p + name, (D,), F32, vector_of(t[p + name], D)))
        decay = t[p + "att.time_decay"]
        plan.append(OutTensor(p + "att.time_decay", (A,), F32,
                              lambda s=decay: decay_transform(s.to_f32().reshape(A))))
        plan.append(OutTensor(p + "att.time_first", (A,), F32,
                              vector_of(t[p + "att.time_first"], A)))
        for name in ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r"):
            plan.append(OutTensor(p + name, (D,), F32, vector_of(t[p + name], D)))
        for name in ("att.key.weight", "att.value.weight", "att.receptance.weight",
                     "att.output.weight"):
            plan.append(OutTensor(p + name, t[p + name].shape, matrix_type,
                                  matrix_of(t[p + name], matrix_type)))
        for name in ("ffn.time_mix_k", "ffn.time_mix_r"):
            plan.append(OutTensor(p + name, (D,), F32, vector_of(t[p + name], D)))
        for name in ("ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight"):
            plan.append(OutTensor(p + name, t[p + name].shape, matrix_type,
                                  matrix_of(t[p + name], matrix_type)))
    for name in ("ln_out.weight", "ln_out.bias"):
        plan.append(OutTensor(name, (D,), F32, vector_of(t[name], D)))
    plan.append(OutTensor("head.weight", t["head.weight"].shape, matrix_type,
                          matrix_of(t["head.weight"], matrix_type)))
    return plan


# -- writing ---------------------------------------------------------------

def add_rwkv4_metadata(writer: GGUFWriter, hp: RWKV4Params, file_type: int,
                       tokenizer: str) -> None:
    """The GGUF keys of an rwkv_cpp RWKV-4 file (see FORMAT.md)."""
    writer.add_string("general.architecture", "rwkv4")
    writer.add_u32("general.alignment", writer.alignment)
    writer.add_u32("general.file_type", file_type)
    writer.add_u32("rwkv.format_version", FORMAT_VERSION)
    writer.add_string("rwkv.version", "4")
    writer.add_u32("rwkv.n_vocab", hp.n_vocab)
    writer.add_u32("rwkv.n_embed", hp.n_embed)
    writer.add_u32("rwkv.n_layer", hp.n_layer)
    writer.add_u32("rwkv.n_att", hp.n_att)
    writer.add_u32("rwkv.n_ffn", hp.n_ffn)
    writer.add_f32("rwkv.layer_norm_epsilon", LAYER_NORM_EPSILON)
    writer.add_string("rwkv.tokenizer", tokenizer)
    writer.add_bool("rwkv.emb_ln0_applied", True)


def write_tensors(writer: GGUFWriter, plan: List[OutTensor],
                  progress: Optional[ProgressFn]) -> None:
    """Stream the planned tensors, one in memory at a time."""
    total = sum(o.nbytes for o in plan)
    done = 0
    if progress:
        progress(0, total, "")
    for out in plan:
        data = out.produce()
        if tuple(data.shape) != tuple(out.shape):
            raise ConvertError(f"tensor '{out.name}': produced shape {data.shape}, "
                               f"planned {out.shape}")
        writer.write_tensor(out.name, data)
        del data
        done += out.nbytes
        if progress:
            progress(done, total, out.name)


def _temp_path_for(dst: str) -> str:
    """A fresh hidden temporary name in the destination's directory."""
    folder, base = os.path.split(os.path.abspath(dst))
    return os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_file_atomically(dst: str, write: Callable[[object], int]) -> int:
    """Run ``write(fileobj)`` into a temporary file, then rename it to dst.

    On any error the temporary file is removed and dst is left untouched.
    """
    tmp = _temp_path_for(dst)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create the output file '{dst}': "
                                 f"{exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            written = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return written


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_ln_x_eps(ln_x_eps: Optional[float], version: str) -> float:
    """The ln_x GroupNorm epsilon to record: the official 64e-5 unless given."""
    if ln_x_eps is None:
        return LN_X_EPSILON
    if version == "4":
        raise ConvertError("--ln-x-eps applies to RWKV-5 and later (ln_x is their GroupNorm); "
                           "this is an RWKV-4 checkpoint")
    if not 0.0 < float(ln_x_eps) < 1.0:
        raise ConvertError(f"--ln-x-eps must lie in (0, 1), got {ln_x_eps}")
    return float(ln_x_eps)


def convert_checkpoint(ckpt: Checkpoint, dst: str, out_type: str = "FP32",
                       tokenizer: Optional[str] = None,
                       progress: Optional[ProgressFn] = None,
                       ln_x_eps: Optional[float] = None) -> ConvertSummary:
    """Convert an open :class:`Checkpoint` to a GGUF file at ``dst``."""
    type_name, file_type, matrix_type = resolve_output_type(out_type)
    tensors = normalize_tensors(ckpt.tensors)
    shapes = {name: t.shape for name, t in tensors.items()}
    version = detect_version(shapes)
    eps = _check_ln_x_eps(ln_x_eps, version)
    if version == "4":
        hp = infer_rwkv4_params(shapes)
        check_rwkv4_tensors(shapes, hp)
        plan = plan_rwkv4(tensors, hp, matrix_type)
        n_att, n_head, head_size = hp.n_att, 0, 0
    else:
        hp = infer_wkv_params(version, shapes)
        check_wkv_tensors(shapes, hp)
        plan = plan_wkv(tensors, hp, matrix_type)
        n_att, n_head, head_size = hp.n_embed, hp.n_head, hp.head_size
    tok = resolve_tokenizer(tokenizer, hp.n_vocab)

    def write(f) -> int:
        writer = GGUFWriter(f)
        if version == "4":
            add_rwkv4_metadata(writer, hp, file_type, tok)
        else:
            add_wkv_metadata(writer, hp, file_type, tok, eps)
        for out in plan:
            writer.add_tensor_info(out.name, out.shape, out.ggml_type)
        writer.write_header()
        write_tensors(writer, plan, progress)
        return writer.finish()

    written = write_file_atomically(str(dst), write)
    return ConvertSummary(version, hp.n_vocab, hp.n_embed, hp.n_layer, n_att,
                          hp.n_ffn, type_name, tok, len(plan), written, ckpt.format,
                          n_head, head_size)


def convert_file(src: str, dst: str, out_type: Optional[str] = None,
                 tokenizer: Optional[str] = None,
                 progress: Optional[ProgressFn] = None,
                 ln_x_eps: Optional[float] = None) -> ConvertSummary:
    """Convert an official RWKV-4/5/6/7 ``.pth`` or ``.safetensors`` file (or
    an rwkv.cpp ``.bin`` model, copied as stored) to GGUF.

    Args:
        src: input checkpoint (format recognised from its content).
        dst: output GGUF path; written to a temporary file, then renamed.
        out_type: ``'FP32'`` (the default) or ``'FP16'``: storage type of
            the matrices (and of the embedding); vectors are always FP32.
            Must be left out (None) for rwkv.cpp ``.bin`` inputs.
        tokenizer: ``'20B'``, ``'world'``, ``'bytes'``, ``'none'``; None
            infers it from n_vocab (50277: 20B, 65536: world, 256: bytes).
        progress: optional ``progress(done_bytes, total_bytes, tensor_name)``.
        ln_x_eps: RWKV-5/6/7 only: the epsilon of the ln_x GroupNorm to
            record in the file (default: 64e-5, the official value).  Only
            for models made with another value (the rwkv.cpp 5.x test
            fixtures used 1e-5; docs/FORMAT.md).

    Returns:
        a :class:`ConvertSummary`.

    Raises:
        ConvertError: unreadable/unsafe/invalid input, with a clear message;
            UnsupportedVersionError (a subclass) for unsupported file versions.
        OSError: the input cannot be opened or the output cannot be written.
    """
    src, dst = str(src), str(dst)
    if _same_file(src, dst):
        raise ConvertError(f"output path '{dst}' is the input file")
    if sniff_format(src) == "rwkv_cpp_bin":
        # rwkv.cpp .bin: tensors are copied as stored (any type); the type
        # is changed afterwards with python -m rwkv_cpp.quantize.
        if out_type is not None and str(out_type).upper() != "AS-STORED":
            raise ConvertError(f"{src}: rwkv.cpp .bin files are converted as stored; leave out --type "
                               "and change the type afterwards with python -m rwkv_cpp.quantize")
        from .legacy_bin import legacy_to_gguf
        return legacy_to_gguf(src, dst, tokenizer, progress, ln_x_eps)
    if out_type is None:
        out_type = "FP32"
    with open_checkpoint(src) as ckpt:
        return convert_checkpoint(ckpt, dst, out_type, tokenizer, progress, ln_x_eps)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], dst: str,
                       out_type: str = "FP32", tokenizer: Optional[str] = None,
                       progress: Optional[ProgressFn] = None,
                       ln_x_eps: Optional[float] = None) -> ConvertSummary:
    """Convert an in-memory state dict of numpy arrays (e.g. a random model
    from :mod:`.random_model`) to a GGUF file; float32 sources, no rounding."""
    return convert_checkpoint(Checkpoint.from_arrays(state_dict), dst, out_type,
                              tokenizer, progress, ln_x_eps)
