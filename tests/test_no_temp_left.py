"""No API leaves a folder or file behind in the temporary directory: loading
rwkv.cpp .bin models (which are converted to a temporary GGUF), failing to
load them, converting, quantizing, and writing state files.

Each scenario runs in a child Python whose TMPDIR is a fresh folder, so
that the check sees exactly what the child left there, including what
would be left at interpreter exit."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fuzz import seeds

@pytest.fixture
def bins(tmp_path):
    """(good .bin, a .bin the converter refuses, a .bin the runtime refuses)."""
    sd = dict(next(sd for label, sd in seeds.seed_state_dicts() if label == "v4"))
    good = tmp_path / "good.bin"
    good.write_bytes(seeds.legacy_bin(sd, 1))
    refused = tmp_path / "refused.bin"  # a (2, 3) decay: the converter stops midway
    sd52 = dict(next(sd for label, sd in seeds.seed_state_dicts() if label == "v52"))
    sd52["blocks.0.att.time_decay"] = np.zeros((2, 3), dtype=np.float32)
    refused.write_bytes(seeds.legacy_bin(sd52, 1))
    unloadable = tmp_path / "unloadable.bin"  # converts, but a tensor is missing
    del sd["blocks.0.ffn.value.weight"]
    unloadable.write_bytes(seeds.legacy_bin(sd, 1))
    return good, refused, unloadable


def _run_with_fresh_tmpdir(tmp_path, code):
    """Run ``code`` in a child whose temporary directory is empty; returns
    what it left there."""
    tmpdir = tmp_path / "child_tmp"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return sorted(os.listdir(tmpdir))


def test_bin_models_leave_no_temp_folder(tmp_path, bins):
    good, refused, unloadable = bins
    left = _run_with_fresh_tmpdir(tmp_path, f"""
        import gc, rwkv_cpp
        with rwkv_cpp.Model({str(good)!r}, n_threads=1) as m:
            ctx = m.context(1)
            ctx.eval(1)
            ctx.close()
        m = rwkv_cpp.Model({str(good)!r}, n_threads=1)
        del m; gc.collect()                       # closed by the garbage collector
        for bad in ({str(refused)!r}, {str(unloadable)!r}):
            try:
                rwkv_cpp.Model(bad, n_threads=1)
            except rwkv_cpp.RWKVError:
                pass
            else:
                raise AssertionError(bad + " loaded")
        kept = rwkv_cpp.Model({str(good)!r}, n_threads=1)   # still open at exit
    """)
    assert left == []


def test_convert_quantize_and_state_files_leave_no_temp_folder(tmp_path, bins):
    good, refused, _ = bins
    out = tmp_path / "out"
    out.mkdir()
    left = _run_with_fresh_tmpdir(tmp_path, f"""
        import numpy as np, rwkv_cpp
        from rwkv_cpp import quantize
        from rwkv_cpp.convert import ConvertError, convert_file
        out = {str(out)!r}
        convert_file({str(good)!r}, out + "/m.gguf")
        try:
            convert_file({str(refused)!r}, out + "/refused.gguf")
        except ConvertError:
            pass
        quantize.quantize({str(good)!r}, out + "/q.gguf", "Q8_0")
        quantize.quantize(out + "/m.gguf", out + "/q2.gguf", "Q8_0")
        with rwkv_cpp.Model(out + "/m.gguf", n_threads=1) as m:
            state = m.init_state()
            m.save_state(out + "/s.state", state)
            m.load_state(out + "/s.state")
            try:
                m.save_state(out + "/bad.state", state[:-1])
            except ValueError:
                pass
    """)
    assert left == []
    assert sorted(os.listdir(out)) == ["m.gguf", "q.gguf", "q2.gguf", "s.state"]
