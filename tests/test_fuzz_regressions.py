"""The inputs of fixed fuzzing findings (tests/data/fuzz, named after the
harness of tests/fuzz that found them; tools/fuzz.py also runs them through
that harness): each must be refused with a clear error."""

from pathlib import Path

import pytest

import rwkv_cpp
from rwkv_cpp import RWKVError

FOLDER = Path(__file__).resolve().parent / "data" / "fuzz"
MODEL_FILES = sorted(FOLDER.glob("gguf_load-*"))


def test_there_are_regression_files():
    assert MODEL_FILES, f"no gguf_load-* files in {FOLDER}"


@pytest.mark.parametrize("path", MODEL_FILES, ids=[p.name for p in MODEL_FILES])
@pytest.mark.parametrize("use_mmap", [True, False])
def test_model_file_is_refused_cleanly(path, use_mmap):
    with pytest.raises(RWKVError) as info:
        rwkv_cpp.Model(str(path), use_mmap=use_mmap)
    assert info.value.status == rwkv_cpp._lib.lib.RWKV_STATUS_ERROR_FILE_FORMAT
    assert str(info.value)


# Enum arguments come from C, where any int may arrive; the library must
# check them without loading an out-of-range value as the C++ enum (UBSan
# reported rwkv_model_params.packed_isa = 7; tools/ci_sanitize.sh runs
# this module under UBSan).

def test_status_str_of_an_unknown_status():
    from rwkv_cpp._lib import ffi, lib
    assert ffi.string(lib.rwkv_status_str(lib.RWKV_STATUS_ERROR_COMPUTE)) == b"computation failed"
    for value in (7, 99, 0x7fffffff):
        assert ffi.string(lib.rwkv_status_str(value)) == b"unknown status"


def test_type_str_of_an_unknown_type():
    from rwkv_cpp._lib import ffi, lib
    assert ffi.string(lib.rwkv_type_str(lib.RWKV_TYPE_Q4_1)) == b"Q4_1"
    for value in (7, 99, 0x7fffffff):
        assert ffi.string(lib.rwkv_type_str(value)) == b"unknown"


@pytest.mark.parametrize("value", [7, 99, 0x7fffffff])
def test_quantize_to_an_unknown_type_is_refused(tmp_path, value):
    from rwkv_cpp._lib import ffi, lib
    src = FOLDER / "gguf_load-n_layer_4096.gguf"  # never read: the type is checked first
    params = ffi.new("struct rwkv_quantize_params *", lib.rwkv_quantize_default_params())
    err = ffi.new("char[]", 256)
    params.error_buf, params.error_buf_size = err, 256
    dst = tmp_path / "out.gguf"
    assert lib.rwkv_quantize(str(src).encode(), str(dst).encode(), value, params) == \
        lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert ffi.string(err).decode() == f"unknown target type {value}"
    assert not dst.exists()
