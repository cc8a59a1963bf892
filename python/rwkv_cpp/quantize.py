"""Quantize a model file: ``python -m rwkv_cpp.quantize IN OUT TYPE``.

TYPE is one of FP32, FP16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1 (ggml block formats).
1-D parameters (layer norms, time_mix, time_first, time_decay) always stay
FP32; which other tensors are quantized is the policy in
docs/QUANTIZATION.md.  The input may be a GGUF file or an rwkv.cpp ``.bin``.
"""

import argparse
import os
import sys

from ._cli import (OutputPathError, Progress, add_quiet_argument, add_threads_argument, add_version_argument,
                   cancellable, check_output_path, report_error)
from ._lib import ffi, lib
from .errors import InvalidArgumentError, ModelIOError, RWKVError, error_for
from .legacy import as_gguf

TYPES = ("FP32", "FP16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1")
_ERROR_BUF_SIZE = 1024


def type_code(name):
    """The ``enum rwkv_type`` value of a type name (case-insensitive)."""
    key = str(name).upper()
    if key not in TYPES:
        raise InvalidArgumentError(
            lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT,
            "unknown type %r; choose one of %s" % (name, ", ".join(TYPES)))
    return getattr(lib, "RWKV_TYPE_" + key)


def quantize(src, dst, type_name, *, n_threads=None, quantize_head=None, quantize_emb=None, progress=None):
    """Writes ``dst``, a copy of the model ``src`` with matrices of type
    ``type_name``.  ``progress(fraction)`` is called after each tensor.
    ``dst`` is checked first: not ``src``, not a folder, in a writable
    folder.  It is written to a temporary file renamed at the end, so it
    never holds a partial model.  Raises an :class:`rwkv_cpp.RWKVError`
    on failure, the ``KeyboardInterrupt`` of a Ctrl-C (the quantizer stops
    after the current tensor and writes nothing)."""
    code = type_code(type_name)
    try:
        check_output_path(dst, [src])
    except OutputPathError as exc:
        raise ModelIOError(lib.RWKV_STATUS_ERROR_IO, str(exc)) from None
    params = ffi.new("struct rwkv_quantize_params *", lib.rwkv_quantize_default_params())
    if n_threads is not None:
        params.n_threads = int(n_threads)
    if quantize_head is not None:
        params.quantize_head = bool(quantize_head)
    if quantize_emb is not None:
        params.quantize_emb = bool(quantize_emb)
    errbuf = ffi.new("char[]", _ERROR_BUF_SIZE)
    params.error_buf = errbuf
    params.error_buf_size = _ERROR_BUF_SIZE
    raised = []
    if progress is not None:
        def stopped(exc_type, exc, tb):
            raised.append(exc)  # returning None makes the callback return false: the quantizer stops

        @ffi.callback("bool(float, void *)", onerror=stopped)
        def callback(fraction, _user):
            progress(fraction)
            return True
        params.progress_callback = callback
    with as_gguf(src) as gguf_path:
        status = lib.rwkv_quantize(os.fsencode(os.fspath(gguf_path)), os.fsencode(os.fspath(dst)), code, params)
    if raised:
        raise raised[0]  # Ctrl-C or an error of the progress callback, after the quantizer cleaned up
    if status != lib.RWKV_STATUS_OK:
        raise error_for(status, ffi.string(errbuf).decode("utf-8", "replace"))


def _size(path):
    return "%.1f MiB" % (os.path.getsize(path) / 2**20)


@cancellable("interrupted; no output written")
def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m rwkv_cpp.quantize",
        description="Write a copy of an RWKV model with its matrices stored in another type. "
                    "1-D parameters stay FP32; see docs/QUANTIZATION.md for which tensors are quantized.")
    ap.add_argument("input", help="model file: GGUF (from python -m rwkv_cpp.convert) or rwkv.cpp .bin")
    ap.add_argument("output", help="output GGUF path (written only when complete)")
    ap.add_argument("type", help="target type: " + ", ".join(TYPES))
    add_threads_argument(ap, "worker threads")
    ap.add_argument("--quantize-head", action="store_true", default=None,
                    help="quantize head.weight too (default: FP16; smaller and faster to decode, "
                         "less accurate: see docs/QUANTIZATION.md)")
    ap.add_argument("--quantize-emb", action="store_true", default=None,
                    help="quantize emb.weight too (default: FP16; only one row of it is read per token, "
                         "so this saves file size, not time)")
    add_quiet_argument(ap, "print nothing but errors")
    add_version_argument(ap)
    args = ap.parse_args(argv)

    try:
        type_code(args.type)
    except RWKVError as exc:
        ap.error(str(exc))
    bar = Progress("quantizing to %s" % args.type.upper(), enabled=not args.quiet)
    try:
        quantize(args.input, args.output, args.type, n_threads=args.threads, quantize_head=args.quantize_head,
                 quantize_emb=args.quantize_emb, progress=bar.update)
    except (RWKVError, OSError, ValueError) as exc:
        return report_error(exc)
    finally:
        bar.close()
    if not args.quiet:
        print("%s (%s) -> %s (%s, %s)" % (args.input, _size(args.input), args.output, _size(args.output),
                                          args.type.upper()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
