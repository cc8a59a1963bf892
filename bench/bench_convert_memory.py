"""Peak memory and time of ``python -m rwkv_cpp.convert`` per output type.

    python -m bench.bench_convert_memory [--version 6.0 --layers 24 --embed 1024
        --vocab 65536] [--types FP16,Q8_0,Q5_1] [--cache-dir bench/cache]

Writes a random bf16 checkpoint of the shape (once, kept in the cache
folder: the default shape is a 0.43B RWKV-6, the 430M class), then converts
it in a child process per type and reads the child's peak resident memory
(``wait4``'s ``ru_maxrss``), beside the peak of a child that only imports
the package (the floor).  Before timing, the first type's output is loaded
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


def peak_rss_of(argv):
    """(seconds, peak RSS in MiB, exit status) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(map(str, argv)), proc.stderr.read().decode(errors="replace")))
    proc.stderr.close()
    return seconds, usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


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
    _, floor = peak_rss_of([sys.executable, "-c", "import rwkv_cpp, rwkv_cpp.convert"])
    print("checkpoint: %s (%.1f MiB, bf16); peak RSS of a bare `import rwkv_cpp`: %.1f MiB" % (src.name, src_mib, floor))
    print()
    print("| type | seconds | peak RSS MiB | above the import MiB | output MiB |")
    print("| --- | --- | --- | --- | --- |")
    for i, out_type in enumerate(args.types.split(",")):
        out = args.cache_dir / ("convert-mem-%s.gguf" % out_type)
        seconds, peak = peak_rss_of([sys.executable, "-m", "rwkv_cpp.convert", str(src), str(out), "--type", out_type,
                                     "--quiet", "--threads", "2"])
        if i == 0:
            check_output(out)
        print("| %s | %.1f | %.1f | %.1f | %.1f |" % (out_type, seconds, peak, peak - floor, out.stat().st_size / 2**20))
        out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
