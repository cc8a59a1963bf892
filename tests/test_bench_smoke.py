"""The benchmarks run (tiny models, no timing assertions)."""

import subprocess
import sys
from pathlib import Path

import rwkv_cpp

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_speed_bench_smoke():
    res = subprocess.run([sys.executable, str(BENCH / "bench_speed.py"), "--smoke", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    kernels = ["packed", "ggml"] if rwkv_cpp.packed_kernels_available() else ["ggml"]
    for t in ("FP16", "Q8_0", "Q5_1", "Q4_0"):
        for k in kernels:
            assert sum(l.startswith("| smoke | %s | %s |" % (t, k)) for l in lines) == 1, res.stdout
        # the side-by-side ratio table, when both kernels ran
        assert sum(l.startswith("| smoke | %s | " % t) and l.endswith("x |") for l in lines) == (len(kernels) == 2)
