#!/usr/bin/env bash
# Linux aarch64 check under emulation: the library cross-compiled for arm64
# (Debian's g++-aarch64-linux-gnu, against the aarch64 wheel of
# libggml-python), installed into a Debian arm64 root (debootstrap), and the
# core suites run there by the arm64 Python under qemu-user.  On arm64 our
# packed AVX kernels are not built in: ggml's NEON kernels run instead.
#
#   tools/aarch64_check.sh ROOT                  # the default suites
#   tools/aarch64_check.sh ROOT tests/test_x.py  # other tests
#
# ROOT is the folder of the arm64 root: made on first use (debootstrap, a few
# minutes), reused later.  Needs root (debootstrap, chroot, mounts), the
# Debian packages qemu-user-static, binfmt-support, debootstrap and
# g++-aarch64-linux-gnu, a Debian mirror and pip's package index.  Too slow
# for CI (docs/PORTABILITY.md has the timings).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -lt 1 ]; then
    echo "usage: tools/aarch64_check.sh ROOT [pytest arguments]" >&2
    exit 2
fi
ROOT=$(realpath -m "$1")
shift
SUITES=(tests/test_sequence.py tests/test_errors.py tests/test_ops.py tests/test_tokenizers.py
        tests/test_malformed_sizes.py tests/test_demo_model.py)
if [ "$#" -gt 0 ]; then
    SUITES=("$@")
fi
DEBIAN_MIRROR=http://deb.debian.org/debian
PY=3.11  # bookworm's python3
GGML=libggml-python==0.20.2.post1
SITE=/opt/venv/lib/python$PY/site-packages  # inside ROOT
BUILD=build/aarch64

for tool in debootstrap aarch64-linux-gnu-g++ cmake; do
    command -v "$tool" > /dev/null || { echo "aarch64_check: $tool is missing (see the header)" >&2; exit 1; }
done
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64

step() { echo "aarch64_check: [$((SECONDS))s] $*"; }

if [ ! -e "$ROOT/.rwkv_root_ready" ]; then
    step "making the arm64 root in $ROOT (debootstrap)"
    debootstrap --arch=arm64 --variant=minbase --foreign --include=python3,python3-venv \
        bookworm "$ROOT" "$DEBIAN_MIRROR"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage
    touch "$ROOT/.rwkv_root_ready"
fi

mounted=()
cleanup() {
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}" || true; done
}
trap cleanup EXIT
for fs in proc dev; do
    mount --bind "/$fs" "$ROOT/$fs"
    mounted+=("$ROOT/$fs")
done

step "the runtime's aarch64 wheels (host pip, for the arm64 root)"
rm -rf "$ROOT/opt/wheels"
python3 -m pip download -q --only-binary :all: --python-version "$PY" \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
    --dest "$ROOT/opt/wheels" "$GGML" numpy cffi tokenizers tqdm pytest "pytest-timeout==2.4.0"
if [ ! -x "$ROOT/opt/venv/bin/python" ]; then
    chroot "$ROOT" python3 -m venv /opt/venv
fi
chroot "$ROOT" /opt/venv/bin/pip install -q --no-index --find-links /opt/wheels \
    "$GGML" numpy cffi tokenizers tqdm pytest "pytest-timeout==2.4.0"

step "cross-compiling the library for aarch64 in $BUILD"
mkdir -p "$BUILD"
if ! { cmake -S . -B "$BUILD" -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
             -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
             -DRWKV_GGML_PREFIX="$ROOT$SITE/libggml" \
        && cmake --build "$BUILD" -j "$(nproc)"; } > "$BUILD/log.txt" 2>&1; then
    tail -n 40 "$BUILD/log.txt"
    exit 1
fi

step "installing the package into the arm64 root"
rm -rf "$ROOT$SITE/rwkv_cpp" "$ROOT/opt/src"
cmake --install "$BUILD" --prefix "$ROOT$SITE" > /dev/null
cp -r python/rwkv_cpp/. "$ROOT$SITE/rwkv_cpp/"
cp -r convert "$ROOT$SITE/rwkv_cpp/convert"
mkdir -p "$ROOT/opt/src" "$ROOT/opt/shared"
cp -r tests demo pyproject.toml "$ROOT/opt/src/"
if [ -d ../shared ]; then  # the shared data folder, ../shared beside the checkout
    mount --bind -o ro "$(realpath ../shared)" "$ROOT/opt/shared"
    mounted+=("$ROOT/opt/shared")
fi

# Emulation is far slower than the machine the per-test limit of
# pyproject.toml (120 s) is set for: the largest sequence test needs more.
step "running ${SUITES[*]} under qemu-aarch64"
chroot "$ROOT" /bin/sh -c "cd /opt/src && /opt/venv/bin/python -c '
import platform, rwkv_cpp, rwkv_cpp._lib as l
print(\"aarch64_check:\", platform.machine(), l._library_path(), \"packed kernels:\", rwkv_cpp.packed_kernels_name())'
/opt/venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 ${SUITES[*]}"
step "done"
