"""Peak memory and time of ``python -m rwkv_cpp.convert`` per output type.

    python -m bench.bench_convert_memory [--version 6.0 --layers 24 --embed 1024
        --vocab 65536] [--types FP16,Q8_0,Q5_1] [--cache-dir bench/cache]

Writes a random bf16 checkpoint of the shape (once, kept in the cache
folder: the default shape is a 0.43B RWKV-6, the 430M class), then converts
it in a child process per type, which reports its own peak resident memory
(``VmHWM`` of /proc/self/status: that of the process image, unlike
``ru_maxrss``, which a child inherits from its parent at fork), beside the
peak of a child that only imports the package (the floor).  Linux only.  Before timing, the first type's output is loaded
and evaluated on a few tokens (a broken file fails the run).  Prints a
Markdown table.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rwkv_cpp.convert import make_state_dict, save_safetensors

DEFAULT_CACHE = Path(__file__).resolve().parent / "cache"


def checkpoint(cache, version, n_layer, n_embed, n_vocab, head_size):
    """The random bf16 .safetensors of the shape, made once."""
    path = cache / ("convert-mem-v%s-L%d-D%d-V%d.safetensors" % (version, n_layer, n_embed, n_vocab))
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        sd = make_state_dict(version, n_vocab, n_embed, n_layer, head_size=head_size, seed=0)
        tmp = path.with_suffix(".tmp")
        save_safetensors(str(tmp), sd, "BF16")
        del sd
        os.replace(tmp, path)
    return path


#: run in the child: the converter's command line (or nothing), then the
#: process's peak resident memory in KiB on the last line of stdout
CHILD = """
import sys
from rwkv_cpp.convert.__main__ import main
status = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
with open("/proc/self/status") as f:
    print(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
sys.exit(status)
"""


def peak_rss_of(convert_args):
    """(seconds, peak RSS in MiB) of a child running the converter with
    ``convert_args`` (none: only the imports)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, convert_args)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit("failed: convert %s\n%s" % (" ".join(map(str, convert_args)), done.stderr))
    return seconds, int(done.stdout.split()[-1]) / 1024.0


def check_output(path):
    """The converted file loads and gives finite logits."""
    import rwkv_cpp

    with rwkv_cpp.Model(str(path), n_threads=2) as model:
        logits, _ = model.eval_sequence([1, 2, 3])
    if not np.all(np.isfinite(logits)):
        sys.exit("%s: non-finite logits" % path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.bench_convert_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default="6.0")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--embed", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--types", default="FP16,Q8_0,Q5_1", help="comma-separated --type values")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the checkpoint and outputs go")
    ap.add_argument("--smoke", action="store_true", help="a tiny shape (L2 D64 V256), for the tests")
    args = ap.parse_args(argv)
    if args.smoke:
        args.layers, args.embed, args.vocab, args.head_size = 2, 64, 256, 16
    src = checkpoint(args.cache_dir, args.version, args.layers, args.embed, args.vocab, args.head_size)
    src_mib = src.stat().st_size / 2**20
    _, floor = peak_rss_of([])
    print("checkpoint: %s (%.1f MiB, bf16); peak RSS of a bare `import rwkv_cpp`: %.1f MiB" % (src.name, src_mib, floor))
    print()
    print("| type | seconds | peak RSS MiB | above the import MiB | output MiB |")
    print("| --- | --- | --- | --- | --- |")
    for i, out_type in enumerate(args.types.split(",")):
        out = args.cache_dir / ("convert-mem-%s.gguf" % out_type)
        seconds, peak = peak_rss_of([src, out, "--type", out_type, "--quiet", "--threads", "2"])
        if i == 0:
            check_output(out)
        print("| %s | %.1f | %.1f | %.1f | %.1f |" % (out_type, seconds, peak, peak - floor, out.stat().st_size / 2**20))
        out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
