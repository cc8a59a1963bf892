"""Command line: ``python -m rwkv_cpp.convert IN OUT [options]``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, TextIO

from tqdm import tqdm

from .convert import convert_file
from .errors import ConvertError
from .paths import EXIT_INTERRUPTED
from .version import version_line

DESCRIPTION = """\
Convert an official RWKV-4, 5.0/5.1/5.2, 6.0 or 7.0 checkpoint to the GGUF
file loaded by rwkv_cpp.

IN may be a PyTorch .pth file written by torch.save (read without torch; the
pickle is never executed: anything but plain tensors is refused) or a
.safetensors file, in fp32, fp16 or bf16, with official BlinkDL tensor names
(emb.weight, blocks.N.att.key.weight, ...) or Hugging Face RWKV-4 names
(rwkv.blocks.N.attention.key.weight, ...).  The format and the RWKV version
are recognised from the file's content.

At conversion the embedding gets blocks.0.ln0 applied (as the official
package does when loading: rounded to the checkpoint's dtype, except for
RWKV-7) and the decays get the official load-time transforms.  Vectors are
always FP32; --type chooses the storage of the matrices and the embedding.
OUT is written to a temporary file and renamed at the end, so a failed
conversion never leaves a partial OUT.  The file layout and every transform
are described in docs/FORMAT.md.
"""

EPILOG = """\
examples:
  python -m rwkv_cpp.convert RWKV-4-Pile-169M-20220807-8023.pth rwkv4-169m.gguf
  python -m rwkv_cpp.convert model.safetensors model-f16.gguf --type FP16

exit status: 0 on success, 1 if the conversion failed, 2 on a usage error,
130 when interrupted (Ctrl-C; nothing is written)."""

#: minimum output size for which progress is shown on a non-terminal stderr.
PROGRESS_MIN_BYTES = 16 << 20


class ProgressPrinter:
    """Progress by tensor bytes on stderr through tqdm: a bar on a terminal,
    otherwise an update at most every 10 s, and only for outputs of at
    least PROGRESS_MIN_BYTES."""

    def __init__(self, stream: TextIO, label: str = "converting"):
        self.stream = stream
        self.label = label
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar: Optional[tqdm] = None

    def __call__(self, done: int, total: int, name: str) -> None:
        if total <= 0 or (not self.tty and total < PROGRESS_MIN_BYTES):
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, unit="B", unit_scale=True, unit_divisor=1024,
                            file=self.stream, mininterval=0.1 if self.tty else 10.0)
        self.bar.set_postfix_str(name[:40], refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


TOKENIZER_CHOICES = ("20B", "world", "bytes", "none")


def _tokenizer_choice(text: str) -> str:
    """Case-insensitive --tokenizer value -> its canonical spelling."""
    for choice in TOKENIZER_CHOICES:
        if text.lower() == choice.lower():
            return choice
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the command line."""
    ap = argparse.ArgumentParser(prog="python -m rwkv_cpp.convert", description=DESCRIPTION,
                                 epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", metavar="IN",
                    help="input checkpoint (.pth or .safetensors), or an rwkv.cpp .bin model (copied as stored)")
    ap.add_argument("output", metavar="OUT", help="output GGUF file")
    ap.add_argument("--type", dest="out_type", default=None, type=str.upper,
                    choices=("FP32", "FP16"),
                    help="storage type of the matrices and embedding (default FP32; "
                         "for quantized types use python -m rwkv_cpp.quantize; not allowed for .bin inputs)")
    ap.add_argument("--tokenizer", default=None, type=_tokenizer_choice,
                    choices=TOKENIZER_CHOICES,
                    help="tokenizer recorded in the file (default: inferred from the "
                         "vocabulary size: 50277 -> 20B, 65536 -> world, 256 -> bytes, "
                         "otherwise none)")
    ap.add_argument("--ln-x-eps", type=float, default=None, metavar="EPS",
                    help="RWKV-5/6/7: epsilon of the ln_x GroupNorm recorded in the file (default 64e-5, "
                         "the official value; the rwkv.cpp 5.x test fixtures need 1e-5)")
    ap.add_argument("-q", "--quiet", action="store_true",
                    help="print nothing but errors (no progress, no summary)")
    ap.add_argument("--version", action="version", version=version_line("python -m rwkv_cpp.convert"))
    return ap


def main(argv: Optional[list] = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    progress = None if args.quiet else ProgressPrinter(sys.stderr)
    try:
        summary = convert_file(args.input, args.output, args.out_type,
                               args.tokenizer, progress, args.ln_x_eps)
    except (ConvertError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        print(f"{args.output}: {summary.line()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
