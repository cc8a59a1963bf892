#!/usr/bin/env bash
# Sanitizer stage: builds the library with AddressSanitizer and UBSan
# (-DRWKV_SANITIZE=ON, in build/sanitize), installs it with the package's
# Python code into a throw-away venv, and runs the C-level tests and the
# core Python suites against it.  Any sanitizer report stops the run
# (halt_on_error, abort_on_error) and fails the stage.
#
#   tools/ci_sanitize.sh                 # the default suites
#   tools/ci_sanitize.sh tests/test_x.py # other tests
#
# Needs the environment of the normal tests (an active venv with '.[test]'
# installed, which provides libggml, pytest, torch, ...) and gcc's libasan.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITES=(tests/test_official_parity.py tests/test_sequence.py tests/test_packed.py tests/test_errors.py
        tests/test_malformed_sizes.py tests/test_fuzz_regressions.py tests/test_ops.py tests/test_context.py
        tests/test_tokenizers.py)
# Timing checks mean nothing under the sanitizers' slowdown.
SUITES+=(--deselect tests/test_context.py::test_two_contexts_run_in_parallel)
if [ "$#" -gt 0 ]; then
    SUITES=("$@")
fi

PYTHON=$(command -v python3)
BUILD=build/sanitize
echo "sanitize: building the library with -fsanitize=address,undefined in $BUILD"
mkdir -p "$BUILD"
if ! { cmake -S . -B "$BUILD" -DRWKV_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
             -DPython_EXECUTABLE="$PYTHON" && cmake --build "$BUILD" -j "$(nproc)"; } > "$BUILD/log.txt" 2>&1; then
    tail -n 50 "$BUILD/log.txt"
    exit 1
fi

# A throw-away venv whose own site-packages holds the package (the Python
# code of this checkout and the sanitized libraries, which find ggml through
# their RPATH, $ORIGIN/../libggml) and which sees the current environment's
# packages (pytest, numpy, torch, ...) after it, through a .pth line.
# PYTHONPATH would not do: an editable install's import hook wins over it.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" -m venv --without-pip "$WORK/venv"
PURELIB='import sysconfig; print(sysconfig.get_paths()["purelib"])'
SITE=$("$WORK/venv/bin/python" -c "$PURELIB")
"$PYTHON" -c "$PURELIB" > "$SITE/outer_environment.pth"
cmake --install "$BUILD" --prefix "$SITE" > /dev/null
cp -r python/rwkv_cpp/. "$SITE/rwkv_cpp/"
cp -r convert "$SITE/rwkv_cpp/convert"
ln -s "$("$PYTHON" -c 'import libggml, os; print(os.path.dirname(libggml.__file__))')" "$SITE/libggml"
PYTHON="$WORK/venv/bin/python"

# Python itself is not instrumented: the ASan runtime is preloaded, with
# libstdc++ (ASan intercepts __cxa_throw when it starts, before Python would
# load libstdc++), and its leak check (which would report the interpreter's
# own allocations) is off.  Reports go to files as well: pytest's capture
# would lose what a test that aborts wrote to stderr.
export LD_PRELOAD
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$WORK/report"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$WORK/report"

"$PYTHON" -c '
import os, sys
from rwkv_cpp._lib import _library_path
path = _library_path()
assert path.startswith(sys.argv[1] + os.sep), "the tests would load %s, not the sanitized library" % path
print("sanitize: testing", path)' "$SITE"
echo "sanitize: running ${SUITES[*]}"
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider -rs "${SUITES[@]}" || status=$?
if compgen -G "$WORK/report.*" > /dev/null; then
    echo "sanitize: sanitizer reports:"
    cat "$WORK"/report.*
    status=1
fi
exit "$status"
