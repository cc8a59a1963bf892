"""Building from source on a machine without a compiler stops at once with
one line that says what to do (CMakeLists.txt looks for the compilers before
enabling the languages), not with CMake's own errors."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_configure_without_compiler_names_the_fix(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH")
    env = dict(os.environ, CC="/bin/false", CXX="/bin/false")
    proc = subprocess.run([cmake, "-S", str(ROOT), "-B", str(tmp_path / "build")], env=env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "no C/C++ compiler found: install g++ or clang" in out, out
    assert "--only-binary :all: rwkv-ggml" in out, out
    # CMake's own messages of a failed project() never come
    assert "No CMAKE_CXX_COMPILER could be found" not in out, out
    assert "is not able to compile a simple test program" not in out, out
