"""The benchmarks run (tiny models, no timing assertions)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_speed_bench_smoke():
    res = subprocess.run([sys.executable, str(BENCH / "bench_speed.py"), "--smoke", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = [l for l in res.stdout.splitlines() if l.startswith("| smoke |")]
    assert len(rows) == 4, res.stdout
