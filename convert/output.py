"""What every conversion path shares when it writes a GGUF file: the
summary it returns, the choices recorded in the metadata (tokenizer, ln_x
epsilon); the atomic write (a temporary file renamed at the end) is in
paths.py.

Checkpoint conversion (convert.py) and rwkv.cpp ``.bin`` import
(legacy_bin.py) both build on this module; it depends on neither.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

from .errors import ConvertError
from .paths import (EXIT_INTERRUPTED, check_output_folder, check_output_path,  # noqa: F401 (re-exported)
                    same_file, write_file_atomically)
from .transforms import LN_X_EPSILON

#: progress(done_bytes, total_bytes, tensor_name), called while writing.
ProgressFn = Callable[[int, int, str], None]

#: --tokenizer choices -> value of rwkv.tokenizer.
TOKENIZERS = {"20b": "20B", "world": "world", "bytes": "bytes", "none": ""}
#: vocabulary size -> tokenizer assumed when none is given.
DEFAULT_TOKENIZER_BY_VOCAB = {50277: "20B", 65536: "world", 256: "bytes"}


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


def resolve_ln_x_eps(ln_x_eps: Optional[float], version: str) -> float:
    """The ln_x GroupNorm epsilon to record: the official 64e-5 unless given."""
    if ln_x_eps is None:
        return LN_X_EPSILON
    if version == "4":
        raise ConvertError("--ln-x-eps applies to RWKV-5 and later (ln_x is their GroupNorm); "
                           "this is an RWKV-4 model")
    if not 0.0 < float(ln_x_eps) < 1.0:
        raise ConvertError(f"--ln-x-eps must lie in (0, 1), got {ln_x_eps}")
    return float(ln_x_eps)
