"""Command line: ``python -m rwkv_cpp.convert IN OUT [options]``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Optional, TextIO

from tqdm import tqdm

from .convert import ConvertOptions, convert_file
from .errors import ConvertError
from .hf_layout import WORLD_VOCAB_NAME
from .llama_export import export_llama_file
from .paths import EXIT_INTERRUPTED
from .version import version_line
from .lora import DEFAULT_LORA_ALPHA
from .storage import DEFAULT_OUTPUT_TYPE, OUTPUT_TYPES, REFUSED_TYPES

DESCRIPTION = """\
Convert an official RWKV-4, 5.0/5.1/5.2, 6.0 or 7.0 checkpoint to the GGUF
file loaded by rwkv_cpp.

IN may be a PyTorch .pth file written by torch.save (read without torch; the
pickle is never executed: anything but plain tensors is refused) or a
.safetensors file, in fp32, fp16 or bf16, with official BlinkDL tensor names
(emb.weight, blocks.N.att.key.weight, ...) or Hugging Face RWKV-4 names
(rwkv.blocks.N.attention.key.weight, ...).  IN may also be a Hugging Face
model folder (config.json and one or more .safetensors files) of the RWKV-5
(Rwkv5ForCausalLM), RWKV-6 (Rwkv6ForCausalLM) or RWKV-7 (RWKV7ForCausalLM,
flash-linear-attention layout) ports.  The format and the RWKV version are
recognised from the content.

At conversion the embedding gets blocks.0.ln0 applied (as the official
package does when loading: rounded to the checkpoint's dtype, except for
RWKV-7) and the decays get the official load-time transforms.  Vectors are
always FP32; --type chooses the storage of the matrices (default FP16).  A
quantized --type (Q8_0, Q5_0, Q5_1, Q4_0, Q4_1) is written in the same single
pass, each tensor quantized as it is written by the library's quantizer under
the policy of python -m rwkv_cpp.quantize (docs/QUANTIZATION.md: the head and
embedding stay FP16 unless --quantize-head/--quantize-emb; the output equals
converting to FP32 and quantizing, byte for byte), so memory stays about one
tensor whatever the model size.  BF16 is refused: the library's kernels do
not run it.

--lora ADAPTER merges an RWKV-LM-LoRA adapter (NAME.lora_A (r, in) and
NAME.lora_B (out, r) for each adapted NAME.weight) as W + (alpha/r) * B @ A,
in float32 before the output type's rounding; any other tensor of the adapter
replaces the base tensor of the same name.

A state-tuned RWKV-5/6/7 checkpoint's blocks.N.att.time_state tensors (in IN,
or in a state-tuning ADAPTER given to --lora) are kept as the file's tuned
initial state, which the model then starts from (docs/FORMAT.md); to use one
without converting, see the programs' --initial-state.

IN may also be a llama.cpp GGUF file of an RWKV-6 or RWKV-7 model
(architectures rwkv6, rwkv7): its tensors are mapped back to the official ones (exactly) and converted.  With --layout
llama.cpp, an RWKV-6/7 model is written the other way, as a GGUF file
llama.cpp (and llama-cpp-python) loads, with the World vocabulary (--vocab)
as its tokenizer.

OUT is written to a temporary file and renamed at the end, so a failed
conversion never leaves a partial OUT.  The file layout and every transform
are described in docs/FORMAT.md.
"""

EPILOG = """\
examples:
  python -m rwkv_cpp.convert RWKV-4-Pile-169M-20220807-8023.pth rwkv4-169m.gguf
  python -m rwkv_cpp.convert model.safetensors model-q5_1.gguf --type Q5_1
  python -m rwkv_cpp.convert base.pth tuned.gguf --lora adapter.pth --lora-alpha 32
  python -m rwkv_cpp.convert rwkv7-world.pth rwkv7-llama.gguf --layout llama.cpp

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
                    help="input checkpoint (.pth or .safetensors), a Hugging Face model folder, "
                         "or an rwkv.cpp .bin model (copied as stored)")
    ap.add_argument("output", metavar="OUT", help="output GGUF file")
    ap.add_argument("--type", dest="out_type", default=None, type=str.upper,
                    choices=tuple(OUTPUT_TYPES) + tuple(REFUSED_TYPES), metavar="TYPE",
                    help="storage type of the matrices: " + ", ".join(OUTPUT_TYPES) +
                         f" (default {DEFAULT_OUTPUT_TYPE}; BF16 is refused, the kernels do not run it; "
                         "not allowed for .bin inputs)")
    ap.add_argument("--quantize-head", action="store_true", default=None,
                    help="with a quantized --type, quantize head.weight too (default FP16, as "
                         "python -m rwkv_cpp.quantize)")
    ap.add_argument("--quantize-emb", action="store_true", default=None,
                    help="with a quantized --type, quantize emb.weight too (default FP16)")
    ap.add_argument("--lora", metavar="ADAPTER", default=None,
                    help="RWKV-LM-LoRA adapter (.pth or .safetensors) to merge into IN")
    ap.add_argument("--lora-alpha", metavar="A", type=float, default=None,
                    help=f"the adapter's alpha: the update is (alpha / r) * B @ A (default "
                         f"{DEFAULT_LORA_ALPHA:g}, RWKV-LM-LoRA's training default)")
    ap.add_argument("-t", "--threads", type=int, default=0, metavar="N",
                    help="quantizer threads (default 0: every CPU; the output does not depend on it)")
    ap.add_argument("--tokenizer", default=None, type=_tokenizer_choice,
                    choices=TOKENIZER_CHOICES,
                    help="tokenizer recorded in the file (default: inferred from the "
                         "vocabulary size: 50277 -> 20B, 65536 -> world, 256 -> bytes, "
                         "otherwise none)")
    ap.add_argument("--ln-x-eps", type=float, default=None, metavar="EPS",
                    help="RWKV-5/6/7: epsilon of the ln_x GroupNorm recorded in the file (default 64e-5, "
                         "the official value; the rwkv.cpp 5.x test fixtures need 1e-5)")
    ap.add_argument("--layout", default="rwkv_cpp", choices=("rwkv_cpp", "llama.cpp"),
                    help="file layout written: rwkv_cpp's (default) or llama.cpp's rwkv6/rwkv7 GGUF "
                         "(RWKV-6 and RWKV-7 models only; --type FP32 or FP16)")
    ap.add_argument("--vocab", default=None, metavar="FILE",
                    help="--layout llama.cpp: the World vocabulary file written as the tokenizer "
                         "(default: rwkv_vocab_v20230424.txt of the installed rwkv_cpp package)")
    ap.add_argument("-q", "--quiet", action="store_true",
                    help="print nothing but errors (no progress, no summary)")
    ap.add_argument("--version", action="version", version=version_line("python -m rwkv_cpp.convert"))
    return ap


def default_world_vocab() -> str:
    """The World vocabulary of the installed rwkv_cpp package, found
    without importing the package (the converter stays below it)."""
    spec = importlib.util.find_spec("rwkv_cpp")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "data", WORLD_VOCAB_NAME)
        if os.path.isfile(path):
            return path
    raise ConvertError(f"cannot find {WORLD_VOCAB_NAME} of the rwkv_cpp package; give it with --vocab")


def _check_llama_args(args) -> None:
    if args.tokenizer not in (None, "world") or args.ln_x_eps is not None:
        raise ConvertError("--layout llama.cpp writes the World tokenizer and llama.cpp's ln_x epsilon "
                           "(64e-5); --tokenizer and --ln-x-eps do not apply")
    if args.lora is not None or args.quantize_head or args.quantize_emb:
        raise ConvertError("--layout llama.cpp writes FP32 or FP16 files of the checkpoint as it is: "
                           "--lora, --quantize-head and --quantize-emb do not apply (convert to rwkv_cpp's "
                           "layout first, or quantize the result with llama.cpp's llama-quantize)")


def main(argv: Optional[list] = None) -> int:
    """Run the command line; returns the exit status."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.lora_alpha is not None and args.lora is None:
        ap.error("--lora-alpha needs --lora")
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    progress = None if args.quiet else ProgressPrinter(sys.stderr)
    options = ConvertOptions(args.out_type, args.quantize_head, args.quantize_emb, args.lora, args.lora_alpha,
                             args.threads)
    try:
        if args.layout == "llama.cpp":
            _check_llama_args(args)
            summary = export_llama_file(args.input, args.output, args.vocab or default_world_vocab(),
                                        args.out_type, progress)
        else:
            summary = convert_file(args.input, args.output, tokenizer=args.tokenizer, progress=progress,
                                   ln_x_eps=args.ln_x_eps, options=options)
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
