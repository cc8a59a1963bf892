"""The benchmarks run (tiny models, no timing assertions)."""

import subprocess
import sys
from pathlib import Path

import pytest

import rwkv_cpp

REPO = Path(__file__).resolve().parents[1]


def run_bench(cache_dir, *args):
    """python -m bench.NAME ARGS from the repository root, as documented, with
    its models and compiled probe in ``cache_dir`` (not the checkout)."""
    res = subprocess.run([sys.executable, "-m", *args, "--cache-dir", str(cache_dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


@pytest.mark.timeout(300)
def test_speed_bench_smoke(tmp_path):
    lines = run_bench(tmp_path, "bench.bench_speed", "--smoke", "--threads", "1")
    kernels = ["packed", "ggml"] if rwkv_cpp.packed_kernels_available() else ["ggml"]
    for t in ("FP16", "Q8_0", "Q5_1", "Q4_0"):
        for k in kernels:
            assert sum(l.startswith("| smoke | %s | %s |" % (t, k)) for l in lines) == 1, lines
        # the side-by-side ratio table, when both kernels ran
        assert sum(l.startswith("| smoke | %s | " % t) and l.endswith("x |") for l in lines) == (len(kernels) == 2)


@pytest.mark.timeout(300)
def test_speed_bench_compares_library_builds(tmp_path):
    """--lib: two builds in the same rounds (here twice the installed
    library; each worker checks that it mapped its own copy)."""
    library = next(p for d in rwkv_cpp.__path__ for p in sorted(Path(d).glob("librwkv_cpp.*")))
    lines = run_bench(tmp_path, "bench.bench_speed", "--smoke", "--threads", "1", "--types", "FP16", "--kernels", "ggml",
                      "--lib", "old=%s" % library, "--lib", "new=%s" % library)
    for build in ("old", "new"):
        assert sum(l.startswith("| smoke | FP16 | ggml | %s | " % build) for l in lines) == 2, lines
    assert any(l.startswith("| model | type | kernels | build | decode ms/token (min-max) | time vs old |")
               for l in lines), lines


def test_peers_bench_skips_cleanly_without_llama_cpp(tmp_path):
    """bench.bench_peers with no llama.cpp build (and --no-build): one line
    saying why, exit 0, no table; --require turns it into a failure."""
    args = [sys.executable, "-m", "bench.bench_peers", "--smoke", "--no-build", "--peers-cache", str(tmp_path / "peers"),
            "--cache-dir", str(tmp_path)]
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "llama.cpp is not available" in res.stderr and "not built" in res.stderr, res.stderr
    assert "| model |" not in res.stdout
    res = subprocess.run(args + ["--require"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "llama.cpp is not available" in res.stderr, res.stderr


def test_peers_bench_table_smoke(tmp_path):
    """The table on a tiny RWKV-7 model, where llama.cpp is already built in
    the default peers cache (a developer machine; CI skips: allow-listed)."""
    from bench.peers import llamacpp

    try:
        llamacpp.ensure(allow_build=False)
    except llamacpp.Unavailable as exc:
        pytest.skip("llama.cpp peer not built here: %s" % exc)
    lines = run_bench(tmp_path, "bench.bench_peers", "--smoke", "--threads", "1", "--require")
    for t in ("FP16", "Q4_0"):
        assert sum(l.startswith("| smoke7 | %s | " % t) for l in lines) == 1, lines


@pytest.mark.timeout(300)
def test_batch_bench_smoke(tmp_path):
    """Every (model, type, batch) row, after the worker's batch-equals-alone check."""
    lines = run_bench(tmp_path, "bench.bench_batch", "--smoke", "--threads", "1", "--types", "Q5_1", "FP16")
    for model in ("rwkv4-smoke", "rwkv7-smoke"):
        for t in ("Q5_1", "FP16"):
            for b in (1, 2, 4):
                assert sum(l.startswith("| %s | %s | %d |" % (model, t, b)) for l in lines) == 1, lines


@pytest.mark.timeout(300)
def test_convert_memory_bench_smoke(tmp_path):
    lines = run_bench(tmp_path, "bench.bench_convert_memory", "--smoke")
    for t in ("FP16", "Q8_0", "Q5_1"):
        assert sum(l.startswith("| %s | " % t) for l in lines) == 1, lines


def test_server_bench_smoke(tmp_path):
    """bench.bench_server --smoke: 4 streaming clients against the server;
    it exits non-zero on any lost or corrupted stream."""
    pytest.importorskip("starlette")
    lines = run_bench(tmp_path, "bench.bench_server", "--smoke")
    rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]] for l in lines
            if l.startswith("| solo |") or l.startswith("| load |")}
    assert rows["load"][0] == "4" and rows["load"][2:4] == ["0", "0"], lines
    assert int(rows["load"][1]) >= 4 and float(rows["load"][4]) > 0
