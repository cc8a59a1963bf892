"""Packed matrices (src/rwkv_packed*): the AVX-512 VNNI and AVX2 kernels
against their naive reference, the reference against ggml's mul_mat and a
float64 product, on awkward sizes; and whole models with and without
packing, and the packed-weight cache."""

import os

import numpy as np
import pytest

import rwkv_cpp
from rwkv_cpp.convert import convert_state_dict, make_rwkv4_state_dict
from rwkv_cpp.quantize import quantize

from _testing_lib import ffi, lib as _lib, ptr as _ptr

# ggml_type ids (ggml.h)
GGML_TYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8}
REFERENCE, AVX2, AVX512, GGML = 0, 1, 2, 3  # enum rwkv_testing_kernels


def _simd(name, kernels):
    return pytest.param(kernels, id=name, marks=pytest.mark.skipif(
        not _lib.rwkv_testing_cpu_runs(kernels), reason="this CPU cannot run the %s kernels" % name))


SIMD_SETS = [_simd("avx2", AVX2), _simd("avx512", AVX512)]

# rows: under, at and over one 16-row group; cols: one block and more;
# tokens: every tile remainder (tiles of 4, then 2, then 1).
SHAPES = [(1, 32, 1), (15, 64, 3), (16, 96, 2), (17, 128, 5), (50, 768, 7), (33, 320, 13)]


def _matmul(kind, w, x, mode, want_dequant=False):
    rows, cols = w.shape
    y = np.zeros((x.shape[0], rows), np.float32)
    wd = np.zeros_like(w) if want_dequant else None
    status = _lib.rwkv_testing_packed_matmul(
        GGML_TYPES[kind], _ptr(w), rows, cols, _ptr(x), x.shape[0], mode, _ptr(y),
        _ptr(wd) if wd is not None else ffi.NULL,
    )
    assert status == 0
    return (y, wd) if want_dequant else y


def _case(rows, cols, tokens, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    x = rng.standard_normal((tokens, cols)).astype(np.float32)
    x[:, : min(cols, 32)] *= 8.0  # one block of larger activations
    return w, x


def _nmse(a, ref):
    ref = ref.astype(np.float64)
    return float(((a.astype(np.float64) - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))


@pytest.mark.parametrize("kind", list(GGML_TYPES))
@pytest.mark.parametrize("rows,cols,tokens", SHAPES)
def test_reference_against_float64_and_ggml(kind, rows, cols, tokens):
    w, x = _case(rows, cols, tokens, seed=rows * 1000 + cols + tokens)
    y_ref, wd = _matmul(kind, w, x, REFERENCE, want_dequant=True)
    exact = x.astype(np.float64) @ wd.astype(np.float64).T
    # F16 keeps the activation in fp32; the quantized types round it to 8
    # bits per block of 32 (relative error ~ 1/(127*sqrt(12)) per value).
    tol = 1e-11 if kind == "F16" else 1e-4
    assert _nmse(y_ref, exact) <= tol
    # ggml also rounds the activation (to FP16 for F16, to Q8 for the rest)
    assert _nmse(_matmul(kind, w, x, GGML), y_ref) <= (1e-6 if kind == "F16" else 1e-4)


@pytest.mark.parametrize("simd", SIMD_SETS)
@pytest.mark.parametrize("kind", list(GGML_TYPES))
@pytest.mark.parametrize("rows,cols,tokens", SHAPES)
def test_simd_kernel_against_reference(simd, kind, rows, cols, tokens):
    w, x = _case(rows, cols, tokens, seed=rows + cols * 7 + tokens)
    y_simd = _matmul(kind, w, x, simd)
    y_ref = _matmul(kind, w, x, REFERENCE)
    # same integers and scales; only the float summation order differs
    scale = float(np.abs(y_ref).max())
    assert float(np.abs(y_simd - y_ref).max()) <= 2e-6 * scale * np.sqrt(cols / 32)


@pytest.mark.parametrize("simd", SIMD_SETS)
@pytest.mark.parametrize("kind", list(GGML_TYPES))
def test_simd_columns_independent_of_tiling(simd, kind):
    # a column's result must not depend on how many columns share its tile
    w, x = _case(40, 256, 7, seed=5)
    together = _matmul(kind, w, x, simd)
    alone = np.concatenate([_matmul(kind, w, x[t : t + 1], simd) for t in range(x.shape[0])])
    assert np.array_equal(together, alone)


@pytest.mark.parametrize("simd", SIMD_SETS)
def test_simd_activation_quantization_equals_reference(simd):
    cols, tokens = 96, 5
    x = np.random.default_rng(1).standard_normal((tokens, cols)).astype(np.float32) * 3
    x[2, 32:64] = 0.0  # an all-zero block
    x[3, 0] = 1e-30
    n = _lib.rwkv_testing_quantized_column_bytes(cols) * tokens
    out = [np.zeros(n, np.uint8) for _ in range(2)]
    for kernels, o in zip((simd, REFERENCE), out):
        assert _lib.rwkv_testing_quantize_activation(_ptr(x), cols, tokens, kernels, _ptr(o, "uint8_t *")) == 0
    assert np.array_equal(out[0], out[1])


def test_bad_arguments_are_refused():
    w, x = _case(4, 48, 1, seed=0)  # 48 columns: not a whole number of blocks
    y = np.zeros((1, 4), np.float32)
    assert _lib.rwkv_testing_packed_matmul(GGML_TYPES["Q8_0"], _ptr(w), 4, 48, _ptr(x), 1, REFERENCE, _ptr(y),
                                           ffi.NULL) != 0
    assert _lib.rwkv_testing_packed_matmul(0, _ptr(w), 4, 48, _ptr(x), 1, REFERENCE, _ptr(y), ffi.NULL) != 0
    w, x = _case(4, 64, 1, seed=0)
    assert _lib.rwkv_testing_packed_matmul(GGML_TYPES["Q8_0"], _ptr(w), 4, 64, _ptr(x), 1, 7, _ptr(y), ffi.NULL) != 0


# ---- whole models ---------------------------------------------------------


def require_packed_kernels():
    """Without packed kernels (a CPU without AVX2, or RWKV_CPP_PACKED_ISA=none)
    the model tests below would compare ggml with ggml: they skip, and under
    CI (tests/skip_policy.py) that skip is a failure."""
    if not rwkv_cpp.packed_kernels_available():
        pytest.skip("nothing is packed: this CPU has no packed kernels (best: %s) or RWKV_CPP_PACKED_ISA "
                    "caps them" % rwkv_cpp.packed_kernels_name())


# n_ffn 328: the value matrix (328 columns) cannot be packed and stays with
# ggml beside packed ones; 300 rows of head: a partial last group.
N_VOCAB, N_EMBED, N_LAYER, N_FFN = 300, 96, 2, 328


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("packed") / "model-f32.gguf"
    convert_state_dict(make_rwkv4_state_dict(N_VOCAB, N_EMBED, N_LAYER, n_ffn=N_FFN, seed=11), str(path), "FP32")
    return path


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(2).integers(0, N_VOCAB, 37).astype(np.uint32)


def _model_file(tmp_path, fp32_file, kind):
    out = tmp_path / ("m-%s.gguf" % kind)
    quantize(fp32_file, out, kind, n_threads=1)
    return str(out)


@pytest.mark.parametrize("kind", ["FP16", "Q8_0", "Q5_1", "Q4_0"])
def test_packed_model_matches_ggml_model(tmp_path, fp32_file, tokens, kind):
    require_packed_kernels()
    path = _model_file(tmp_path, fp32_file, kind)
    runs = {}
    for repack in (False, True):
        with rwkv_cpp.Model(path, n_threads=1, repack=repack) as m:
            # every matrix but the FFN value one (328 columns) is packed
            assert (m.packed_bytes > 0) == repack and (m.packed_kernels_name != "none") == repack
            runs[repack] = m.eval_sequence(tokens, all_logits=True)
    (l0, s0), (l1, s1) = runs[False], runs[True]
    # Both round the activations (ggml: FP16 / Q8 per block; packed: fp32 /
    # 8 bits per block): the same small error, not the same bits.
    assert _nmse(l1, l0) <= (1e-6 if kind == "FP16" else 1e-4)
    assert _nmse(s1, s0) <= (1e-6 if kind == "FP16" else 1e-4)


@pytest.mark.parametrize("kind", ["FP16", "Q5_1"])
def test_packed_sequence_equals_token_by_token(tmp_path, fp32_file, tokens, kind):
    require_packed_kernels()
    path = _model_file(tmp_path, fp32_file, kind)
    with rwkv_cpp.Model(path, n_threads=2, repack=True) as m:
        assert m.packed_bytes > 0 and m.packed_kernels_name != "none"
        seq_logits, seq_state = m.eval_sequence(tokens)
        state = None
        for t in tokens:
            logits, state = m.eval(int(t), state)
    assert np.array_equal(seq_logits, logits)
    assert np.array_equal(seq_state, state)


@pytest.mark.skipif(not _lib.rwkv_testing_cpu_runs(AVX2), reason="this CPU cannot run the avx2 kernels")
@pytest.mark.parametrize("kind", ["FP16", "Q8_0", "Q5_1", "Q4_0"])
def test_avx2_kernels_in_a_model(tmp_path, fp32_file, tokens, kind):
    # packed_isa="avx2" makes a model use the AVX2 kernels on any CPU that has them
    path = _model_file(tmp_path, fp32_file, kind)
    with rwkv_cpp.Model(path, n_threads=2, repack=False) as m:
        assert m.packed_kernels_name == "none"
        l0, s0 = m.eval_sequence(tokens, all_logits=True)
    with rwkv_cpp.Model(path, n_threads=2, packed_isa="avx2") as m:
        assert m.packed_kernels_name == "AVX2" and m.packed_bytes > 0
        l1, s1 = m.eval_sequence(tokens, all_logits=True)
        state = None
        for t in tokens:
            logits, state = m.eval(int(t), state)
    assert _nmse(l1, l0) <= (1e-6 if kind == "FP16" else 1e-4)
    assert _nmse(s1, s0) <= (1e-6 if kind == "FP16" else 1e-4)
    assert np.array_equal(l1[-1], logits) and np.array_equal(s1, state)


def test_packed_isa_parameter(tmp_path, fp32_file, tokens):
    require_packed_kernels()
    path = _model_file(tmp_path, fp32_file, "Q5_1")
    best = rwkv_cpp.packed_kernels_name()
    with rwkv_cpp.Model(path, n_threads=2, repack=False) as m:
        ggml_run = m.eval_sequence(tokens, all_logits=True)
    # "none" is repack=False: the same kernels, the same bits
    with rwkv_cpp.Model(path, n_threads=2, packed_isa="none") as m:
        assert m.packed_kernels_name == "none" and m.packed_bytes == 0
        run = m.eval_sequence(tokens, all_logits=True)
        assert all(np.array_equal(a, b) for a, b in zip(run, ggml_run))
    # the default and the most capable set: the best this CPU has (a set it
    # lacks falls back to the best below it)
    for isa in ("auto", "avx512"):
        with rwkv_cpp.Model(path, n_threads=1, packed_isa=isa) as m:
            assert m.packed_kernels_name == best
            assert (m.packed_bytes > 0) == (best != "none")
    # asking for kernels never packs when repack is off
    with rwkv_cpp.Model(path, n_threads=1, repack=False, packed_isa="avx2") as m:
        assert m.packed_kernels_name == "none" and m.packed_bytes == 0
    # an FP32 model has no matrix to pack: no kernels run
    with rwkv_cpp.Model(str(fp32_file), n_threads=1) as m:
        assert m.packed_kernels_name == "none" and m.packed_bytes == 0
    with pytest.raises(ValueError):
        rwkv_cpp.Model(path, packed_isa="avx3")


def test_packed_isa_outside_the_enum_is_refused(fp32_file):
    from rwkv_cpp._lib import ffi, lib

    params = lib.rwkv_model_default_params()
    assert params.packed_isa == lib.RWKV_PACKED_ISA_AUTO
    params.packed_isa = 7
    out = ffi.new("struct rwkv_model **")
    err = ffi.new("char[]", 256)
    assert lib.rwkv_model_load(str(fp32_file).encode(), params, out, err, 256) == lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT
    assert out[0] == ffi.NULL and b"packed_isa" in ffi.string(err)


_OVERRIDE_SCRIPT = r"""
import sys
import numpy as np
import rwkv_cpp
path, tokens, out = sys.argv[1], np.array([int(t) for t in sys.argv[2].split(",")], np.uint32), sys.argv[3]
names = [rwkv_cpp.packed_kernels_name()]
for isa in ("auto", "avx512", "none"):
    with rwkv_cpp.Model(path, n_threads=2, packed_isa=isa) as m:
        names.append(m.packed_kernels_name)
        if isa == "auto":
            np.save(out, m.eval_sequence(tokens, all_logits=True)[0])
print("RESULT", ",".join(names))
"""


@pytest.mark.skipif(not _lib.rwkv_testing_cpu_runs(AVX2), reason="this CPU cannot run the avx2 kernels")
@pytest.mark.parametrize("cap", ["avx2", "none"])
def test_environment_override_only_caps(tmp_path, fp32_file, tokens, cap):
    # RWKV_CPP_PACKED_ISA, a debugging override read once per process (hence
    # the subprocess), caps every model's kernels and never raises them
    import os
    import subprocess
    import sys

    path = _model_file(tmp_path, fp32_file, "Q5_1")
    out = tmp_path / "logits.npy"
    env = dict(os.environ, RWKV_CPP_PACKED_ISA=cap)
    res = subprocess.run([sys.executable, "-c", _OVERRIDE_SCRIPT, path, ",".join(str(int(t)) for t in tokens),
                          str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    capped = "AVX2" if cap == "avx2" else "none"
    assert res.stdout.split("RESULT")[1].split() == [",".join([capped, capped, capped, "none"])]
    # the same numbers as the parameter asking for those kernels in this process
    with rwkv_cpp.Model(path, n_threads=2, packed_isa=cap) as m:
        assert np.array_equal(np.load(out), m.eval_sequence(tokens, all_logits=True)[0])


# -- packed_products: several products (and their activations) in one node --

ACTS = {"none": 0, "tanh": 1, "sigmoid": 2, "relu_sq": 3}
# (rows, cols) per product: partial groups, different widths (the threads
# split the products' bytes, so a boundary falls inside some of them)
PRODUCT_SHAPES = [(20, 64), (48, 96), (7, 32), (33, 128)]


def _products(kind, ws, xs, acts, mode, threads):
    n, T = len(ws), xs[0].shape[0]
    rows = [w.shape[0] for w in ws]
    y = np.zeros(T * sum(rows), np.float32)
    keep = [np.ascontiguousarray(a) for a in ws + xs]
    status = _lib.rwkv_testing_packed_products(
        GGML_TYPES[kind], n, [_ptr(a) for a in keep[:n]], rows, [w.shape[1] for w in ws],
        [_ptr(a) for a in keep[n:]], acts, T, mode, threads, _ptr(y))
    assert status == 0
    out, at = [], 0
    for r in rows:
        out.append(y[at:at + T * r].reshape(T, r))
        at += T * r
    return out


def _activate(name, y):
    y = y.astype(np.float64)
    return {"none": y, "tanh": np.tanh(y), "sigmoid": 1.0 / (1.0 + np.exp(-y)),
            "relu_sq": np.maximum(y, 0.0) ** 2}[name]


@pytest.mark.parametrize("mode", [pytest.param(REFERENCE, id="reference")] + SIMD_SETS)
@pytest.mark.parametrize("kind", ["F16", "Q8_0", "Q5_1", "Q4_0"])
@pytest.mark.parametrize("tokens", [1, 5])
def test_packed_products_equal_single_products(mode, kind, tokens):
    """Each block is the single packed product of its matrix (same kernels:
    the same bits) with its activation (float64 of that product, 1e-6
    relative: float32 tanh/exp), and no thread count changes a bit."""
    names = list(ACTS)
    ws, xs = [], []
    for i, (rows, cols) in enumerate(PRODUCT_SHAPES):
        w, x = _case(rows, cols, tokens, seed=100 + 10 * i + tokens)
        ws.append(w)
        xs.append(x)
    acts = [ACTS[names[i % len(names)]] for i in range(len(ws))]
    one = _products(kind, ws, xs, acts, mode, 1)
    for threads in (2, 3, 5):
        for a, b in zip(one, _products(kind, ws, xs, acts, mode, threads)):
            assert np.array_equal(a, b)
    for i, (w, x) in enumerate(zip(ws, xs)):
        expected = _activate(names[i % len(names)], _matmul(kind, w, x, mode))
        scale = max(float(np.abs(expected).max()), 1e-30)
        assert float(np.abs(one[i] - expected).max()) <= 1e-6 * scale, names[i % len(names)]


def test_packed_products_bad_arguments_are_refused():
    w, x = _case(16, 32, 1, seed=1)
    y = np.zeros(16, np.float32)
    args = lambda n, act, mode, threads: _lib.rwkv_testing_packed_products(  # noqa: E731
        GGML_TYPES["F16"], n, [_ptr(w)] * max(n, 1), [16] * max(n, 1), [32] * max(n, 1), [_ptr(x)] * max(n, 1),
        [act] * max(n, 1), 1, mode, threads, _ptr(y))
    assert args(1, 0, REFERENCE, 1) == 0
    for bad in (args(0, 0, REFERENCE, 1), args(9, 0, REFERENCE, 1), args(1, 4, REFERENCE, 1),
                args(1, -1, REFERENCE, 1), args(1, 0, GGML, 1), args(1, 0, REFERENCE, 0)):
        assert bad != 0


# ---- the packed-weight cache (Model(packed_cache=...), src/rwkv_packed_cache.h)

CACHE_DATA_OFFSET = 2 << 20  # the packed bytes start 2 MiB into the file


def _run(path, tokens, **kwargs):
    with rwkv_cpp.Model(path, n_threads=1, **kwargs) as m:
        logits, state = m.eval_sequence(tokens, all_logits=True)
        return logits, state, m.packed_bytes


def _same_bits(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2]))


@pytest.mark.parametrize("kind", ["FP16", "Q4_0"])
def test_packed_cache_is_written_then_mapped(tmp_path, fp32_file, tokens, kind):
    require_packed_kernels()
    path = _model_file(tmp_path, fp32_file, kind)
    cache = tmp_path / "weights.packed"
    packed = _run(path, tokens)
    first = _run(path, tokens, packed_cache=str(cache))  # packs, then writes the cache
    assert cache.stat().st_size == CACHE_DATA_OFFSET + packed[2]
    inode = cache.stat().st_ino
    second = _run(path, tokens, packed_cache=cache)      # maps it (a path-like works too)
    assert cache.stat().st_ino == inode                  # not rewritten
    assert _same_bits(first, packed) and _same_bits(second, packed) and second[2] == packed[2]
    assert not list(tmp_path.glob("weights.packed.tmp*"))
    # the second load read the weights from the cache: zeroed there, they
    # change the answer (the cache has no checksum, as a model file has none)
    with open(cache, "r+b") as f:
        f.seek(CACHE_DATA_OFFSET)
        f.write(bytes(packed[2]))
    assert not _same_bits(_run(path, tokens, packed_cache=cache), packed)


def test_packed_cache_of_another_model_or_file_is_rewritten(tmp_path, fp32_file, tokens):
    require_packed_kernels()
    a, b = _model_file(tmp_path, fp32_file, "Q5_1"), _model_file(tmp_path, fp32_file, "Q8_0")
    cache = str(tmp_path / "shared.packed")
    want_a, want_b = _run(a, tokens), _run(b, tokens)
    assert _same_bits(_run(a, tokens, packed_cache=cache), want_a)
    assert _same_bits(_run(b, tokens, packed_cache=cache), want_b)  # a's cache: b packs and rewrites it
    inode = os.stat(cache).st_ino
    assert _same_bits(_run(b, tokens, packed_cache=cache), want_b)
    assert os.stat(cache).st_ino == inode
    # the same model file, modified since (its time here): rewritten
    st = os.stat(b)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _same_bits(_run(b, tokens, packed_cache=cache), want_b)
    assert os.stat(cache).st_ino != inode


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "longer", "header"])
def test_damaged_packed_cache_is_replaced(tmp_path, fp32_file, tokens, damage):
    require_packed_kernels()
    path = _model_file(tmp_path, fp32_file, "Q4_0")
    cache = tmp_path / "w.packed"
    want = _run(path, tokens, packed_cache=cache)
    good = cache.read_bytes()
    bad = {"empty": b"", "garbage": os.urandom(len(good)), "truncated": good[:-64], "longer": good + b"\0" * 64,
           "header": good[:50] + bytes([good[50] ^ 1]) + good[51:]}[damage]  # the layout hash
    cache.write_bytes(bad)
    assert _same_bits(_run(path, tokens, packed_cache=cache), want)
    assert cache.read_bytes() == good


def test_packed_cache_that_cannot_be_written(tmp_path, fp32_file, tokens):
    require_packed_kernels()
    path = _model_file(tmp_path, fp32_file, "Q5_1")
    want = _run(path, tokens)
    # its folder does not exist / the path is a folder: the load still works
    for cache in (tmp_path / "missing" / "w.packed", tmp_path):
        assert _same_bits(_run(path, tokens, packed_cache=cache), want)
    assert not (tmp_path / "missing").exists()
    # nothing is packed without repack: no cache either
    cache = tmp_path / "unused.packed"
    _run(path, tokens, packed_cache=cache, repack=False)
    assert not cache.exists()
