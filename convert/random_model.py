"""Command line: write a random RWKV checkpoint (official tensor names) as
.safetensors, for tests and demos::

    python -m rwkv_cpp.convert.random_model OUT.safetensors --vocab 256 \\
        --embed 64 --layer 2 [--ffn 256] [--seed 0] [--dtype F32|BF16] \\
        [--rwkv-version 4|5.0|5.1|5.2|6.0|7.0] [--head-size 64]

The generators live in :mod:`.random_weights` (this module re-exports them
under their historical import path); the package imports that module, not
this one, so that ``python -m`` runs this one only once.
"""

from __future__ import annotations

import argparse
import sys
import time

from tqdm import tqdm

from .__main__ import ProgressPrinter
from .errors import ConvertError
from .paths import EXIT_INTERRUPTED, check_output_path
from .random_weights import (make_rwkv4_state_dict, make_rwkv5_state_dict,  # noqa: F401 (re-exported)
                             make_rwkv6_state_dict, make_rwkv7_state_dict, make_state_dict,
                             save_safetensors)
from .version import version_line


def _layer_bar(n_layer: int, quiet: bool) -> tqdm:
    """A progress bar of the layers generated (on stderr: a bar on a
    terminal, otherwise a line at most every 10 s)."""
    tty = sys.stderr.isatty()
    return tqdm(total=n_layer, desc="generating", unit="layer", file=sys.stderr, disable=quiet,
                mininterval=0.1 if tty else 10.0)


def main(argv=None) -> int:
    """Command line: write a random RWKV checkpoint as safetensors."""
    ap = argparse.ArgumentParser(
        prog="python -m rwkv_cpp.convert.random_model",
        description="Write a random RWKV checkpoint (official tensor names) "
                    "as .safetensors, for tests and demos.")
    ap.add_argument("out", help="output .safetensors path")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=None, help="default 4 * embed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("F32", "BF16", "F16"), default="F32")
    ap.add_argument("--rwkv-version", choices=("4", "5.0", "5.1", "5.2", "6.0", "7.0"), default="4",
                    help="RWKV version of the checkpoint (default %(default)s)")
    ap.add_argument("--head-size", type=int, default=64, help="RWKV-5 and later (default 64)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    ap.add_argument("--version", action="version", version=version_line(ap.prog))
    args = ap.parse_args(argv)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        check_output_path(args.out)
        start = time.perf_counter()
        say("generating random RWKV-%s weights (%d layers, %d wide, vocabulary %d)"
            % (args.rwkv_version, args.layer, args.embed, args.vocab))
        with _layer_bar(args.layer, args.quiet) as bar:
            sd = make_state_dict(args.rwkv_version, args.vocab, args.embed, args.layer, args.head_size, args.ffn,
                                 args.seed, progress=lambda fraction: bar.update(round(fraction * args.layer) - bar.n))
        n_params = sum(a.size for a in sd.values())
        say("generated %d tensors, %.1f M parameters in %.1f s; writing %s"
            % (len(sd), n_params / 1e6, time.perf_counter() - start, args.out))
        writing = None if args.quiet else ProgressPrinter(sys.stderr, "writing")
        save_safetensors(args.out, sd, args.dtype, progress=writing)
    except (ConvertError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    say("wrote %s in %.1f s" % (args.out, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
