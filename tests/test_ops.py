"""Each custom ggml op of src/rwkv_ops.h alone against a float64 reference
(the manner of ggml's test-backend-ops), so that a parity failure names the
op.  The ops run through rwkv_testing_run_op (a one-node ggml graph on copies
of the arrays) with 1, 2 and 3 threads, on awkward shapes: widths that are
not multiples of 8 or 16, one, two and seven tokens, several heads, head
sizes 1 to 64.

Tolerance: NMSE = sum((out - ref)^2) / sum(ref^2) <= 1e-10 for every op.
Each output is a short chain of fp32 operations (at most a few dozen
roundings of relative size 6e-8 per value: a dot product of 64 terms, a
group norm, seven recurrence steps with decays below 1), on inputs of order
one that keep every step well conditioned (no cancellation to speak of), so
the relative error per value stays below ~1e-6 and the NMSE near 1e-12 or
less; the largest measured are 2e-12 (wkv5: 64-wide heads, seven tokens)
and 6e-14 (wkv7), 1e-15 for the element-wise ops.  A real bug (a wrong sign, index, token
or formula) gives NMSE of 1e-4 or more.  A run with more threads must give
the same bits as with one: every kernel computes an item the same way
whichever thread takes it.
"""

import zlib

import numpy as np
import pytest

import reference_rwkv4 as ref4
import reference_rwkv5plus as ref
from _testing_lib import ffi, lib

NMSE_TOL = 1e-10
THREADS = (1, 2, 3)
LN_EPS = 1e-5


def _nmse(out, expected):
    expected = np.asarray(expected, np.float64)
    err = np.asarray(out, np.float64) - expected
    return float((err * err).sum() / max((expected * expected).sum(), 1e-300))


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def run_op(op, inputs, out_shape, n_embed, n_tokens, n_threads, side_len=0, n_head=0, head_size=0, n_mix=0,
           eps=0.0):
    """Runs op on float32 copies of inputs (None: an absent optional input);
    returns (out reshaped to out_shape, side output or None)."""
    args = ffi.new("struct rwkv_testing_op_args *")
    args.n_embed, args.n_tokens, args.n_head, args.head_size = n_embed, n_tokens, n_head, head_size
    args.n_mix, args.n_threads, args.eps = n_mix, n_threads, eps
    keep = [None if a is None else _f32(a) for a in inputs]
    for i, a in enumerate(keep):
        args.inputs[i] = ffi.NULL if a is None else ffi.cast("float *", ffi.from_buffer(a))
    out = np.full(out_shape, np.nan, np.float32)
    args.out, args.out_len = ffi.cast("float *", ffi.from_buffer(out)), out.size
    side = np.full(side_len, np.nan, np.float32) if side_len else None
    if side is not None:
        args.side_out, args.side_len = ffi.cast("float *", ffi.from_buffer(side)), side_len
    status = lib.rwkv_testing_run_op(op, args)
    assert status == 0, status
    return out, side


def check(run, expected):
    """run(n_threads) -> tuple of arrays; expected: the float64 tuple."""
    first = run(1)
    for got, want in zip(first, expected):
        assert got.shape == np.shape(want)
        assert _nmse(got, want) <= NMSE_TOL, _nmse(got, want)
    for n_threads in THREADS[1:]:
        for got, same in zip(run(n_threads), first):
            assert np.array_equal(got, same), n_threads


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _shifted(xx, x_prev):
    """sx = cat(x_prev, xx[:-1]) for xx (T, D)."""
    return np.concatenate([x_prev[None, :], xx[:-1]])


# ---- token-shift mixes ----------------------------------------------------

SHIFT_SHAPES = [(1, 1), (13, 1), (13, 2), (40, 7), (100, 7), (3, 2)]  # (D, T)


@pytest.mark.parametrize("D,T", SHIFT_SHAPES)
@pytest.mark.parametrize("n_mix", [1, 2, 3])
def test_ln_shift_mix(D, T, n_mix):
    rng = _rng("ln", D, T, n_mix)
    x = _f32(rng.standard_normal((T, D)) * 2 + 0.5).astype(np.float64)
    w, b, x_prev = (_f32(rng.standard_normal(D)).astype(np.float64) for _ in range(3))
    mixes = [_f32(rng.uniform(0, 1, D)).astype(np.float64) for _ in range(n_mix)]
    xx = np.stack([ref.layer_norm(row, w, b, LN_EPS) for row in x])
    sx = _shifted(xx, x_prev)
    expected = (np.stack([xx * mu + sx * (1 - mu) for mu in mixes]), xx[-1])
    check(lambda nt: run_op(lib.RWKV_TESTING_OP_LN_SHIFT_MIX, [x, w, b, x_prev] + mixes, (n_mix, T, D), D, T, nt,
                            side_len=D, n_mix=n_mix, eps=LN_EPS), expected)


@pytest.mark.parametrize("D,T", SHIFT_SHAPES)
@pytest.mark.parametrize("n_mix", [1, 4, 6])
@pytest.mark.parametrize("op", ["WEIGHTED_SUM", "ADD_DELTA"])
def test_shift_mix(D, T, n_mix, op):
    rng = _rng("shift", D, T, n_mix, op)
    xx = _f32(rng.standard_normal((T, D))).astype(np.float64)
    x_prev = _f32(rng.standard_normal(D)).astype(np.float64)
    mus = [_f32(rng.uniform(0, 1, D)).astype(np.float64) for _ in range(n_mix)]
    sx = _shifted(xx, x_prev)
    # WeightedSum: xx * mu + sx * (1 - mu); AddDelta: xx + (sx - xx) * mu
    mix = (lambda mu: xx * mu + sx * (1 - mu)) if op == "WEIGHTED_SUM" else (lambda mu: xx + (sx - xx) * mu)
    expected = (np.stack([mix(mu) for mu in mus]),)
    check(lambda nt: run_op(getattr(lib, "RWKV_TESTING_OP_SHIFT_MIX_" + op), [xx, x_prev] + mus, (n_mix, T, D), D,
                            T, nt, n_mix=n_mix)[:1], expected)


@pytest.mark.parametrize("D,T", SHIFT_SHAPES)
def test_shift_mix_lora(D, T):
    rng = _rng("lora", D, T)
    xx = _f32(rng.standard_normal((T, D))).astype(np.float64)
    x_prev = _f32(rng.standard_normal(D)).astype(np.float64)
    m = _f32(rng.standard_normal((5, T, D)) * 0.3).astype(np.float64)
    maa = [_f32(rng.uniform(0, 1, D)).astype(np.float64) for _ in range(5)]
    sx = _shifted(xx, x_prev) - xx
    expected = (np.stack([xx + sx * (maa[i] + m[i]) for i in range(5)]),)
    check(lambda nt: run_op(lib.RWKV_TESTING_OP_SHIFT_MIX_LORA, [xx, x_prev, m] + maa, (5, T, D), D, T, nt)[:1],
          expected)


# ---- WKV-4 ----------------------------------------------------------------


@pytest.mark.parametrize("D,T", [(1, 1), (13, 2), (40, 7), (100, 7), (17, 1)])
@pytest.mark.parametrize("fresh", [False, True])
def test_wkv4_gated(D, T, fresh):
    rng = _rng("wkv4", D, T, fresh)
    k, v, r = (_f32(rng.standard_normal((T, D)) * s).astype(np.float64) for s in (2.0, 1.0, 1.0))
    first = _f32(rng.standard_normal(D)).astype(np.float64)
    decay = _f32(-np.exp(rng.standard_normal(D) * 0.5)).astype(np.float64)  # -exp(time_decay)
    if fresh:  # the initial state: aa = bb = 0, pp = -1e30
        state = np.concatenate([np.zeros(2 * D), np.full(D, -1e30)])
    else:
        state = _f32(np.concatenate([rng.standard_normal(D), rng.uniform(0.5, 2, D), rng.standard_normal(D)]))
        state = state.astype(np.float64)
    aa, bb, pp = state[:D].copy(), state[D:2 * D].copy(), state[2 * D:].copy()
    out = np.empty((T, D))
    for t in range(T):
        for c in range(D):
            wkv, aa[c], bb[c], pp[c] = ref4.wkv_step_ref(k[t, c], v[t, c], aa[c], bb[c], pp[c], decay[c], first[c])
            out[t, c] = ref.sigmoid(r[t, c]) * wkv
    expected = (out, np.concatenate([aa, bb, pp]))
    check(lambda nt: run_op(lib.RWKV_TESTING_OP_WKV4_GATED, [k, v, r, first, decay, state], (T, D), D, T, nt,
                            side_len=3 * D), expected)


# ---- WKV-5/6 --------------------------------------------------------------

HEADS = [(1, 1), (3, 1), (2, 8), (5, 8), (3, 5), (1, 64), (2, 64)]  # (n_head, head_size)


@pytest.mark.parametrize("H,N", HEADS)
@pytest.mark.parametrize("T", [1, 2, 7])
@pytest.mark.parametrize("lora_decay", [False, True], ids=["v5", "v6"])
def test_wkv5(H, N, T, lora_decay):
    D = H * N
    rng = _rng("wkv5", H, N, T, lora_decay)
    r, k, v = (_f32(rng.standard_normal((T, D))).astype(np.float64) for _ in range(3))
    if lora_decay:  # v6: w = exp(-exp(decay + lora)) per token
        decay = _f32(rng.standard_normal(D) * 0.5 - 1).astype(np.float64)
        lora = _f32(rng.standard_normal((T, D)) * 0.3).astype(np.float64)
        w = np.exp(-np.exp(decay + lora))
    else:  # v5: the stored exp(-exp(time_decay))
        decay = _f32(np.exp(-np.exp(rng.standard_normal(D) * 0.5 - 1))).astype(np.float64)
        lora, w = None, np.tile(decay, (T, 1))
    u, lnx_w, lnx_b = (_f32(rng.standard_normal(D)).astype(np.float64) for _ in range(3))
    state = _f32(rng.standard_normal((H, N, N))).astype(np.float64)
    S, out = state.copy(), np.empty((T, D))
    for t in range(T):
        y = np.empty(D)
        for h in range(H):
            c = slice(h * N, (h + 1) * N)
            y[c], S[h] = ref.wkv5_head(r[t, c], k[t, c], v[t, c], w[t, c], u[c], S[h])
        out[t] = ref.group_norm(y, H, lnx_w, lnx_b, ref.LN_X_EPS)
    inputs = [r, k, v, decay, lora, u, lnx_w, lnx_b, state.reshape(-1)]

    def run(nt):
        res = run_op(lib.RWKV_TESTING_OP_WKV5, inputs, (T + N, D), D, T, nt, n_head=H, head_size=N,
                     eps=ref.LN_X_EPS)[0]
        return res[:T], res[T:].reshape(H, N, N)

    check(run, (out, S))


# ---- WKV-7 ----------------------------------------------------------------


def _wkv7_prepare_ref(H, N, k, v, a_lora, a0, k_k, k_a, v_lora, v0, v_first):
    """(kk, k', v', a) of RWKV_x070_TMix_one, each (T, D), in float64."""
    T = k.shape[0]
    a = ref.sigmoid(a0 + a_lora)
    kk = (k * k_k).reshape(T, H, N)
    norm = np.maximum(np.sqrt((kk * kk).sum(axis=-1, keepdims=True)), ref.L2_NORM_EPS)
    kk = (kk / norm).reshape(T, H * N)
    kp = k * (1 + (a - 1) * k_a)
    vp = v if v_lora is None else v + (v_first - v) * ref.sigmoid(v0 + v_lora)
    return np.stack([kk, kp, vp, a])


def _wkv7_inputs(rng, H, N, T, residual):
    D = H * N
    cols = [_f32(rng.standard_normal((T, D))).astype(np.float64) for _ in range(3)]  # k, v, a_lora
    vecs = [_f32(rng.standard_normal(D) * s + m).astype(np.float64) for s, m in ((1, 0), (1, 1), (0.5, 0.5))]
    if not residual:
        return cols + vecs + [None, None, None]
    v_lora, v_first = (_f32(rng.standard_normal((T, D))).astype(np.float64) for _ in range(2))
    return cols + vecs + [v_lora, _f32(rng.standard_normal(D)).astype(np.float64), v_first]


@pytest.mark.parametrize("H,N", HEADS)
@pytest.mark.parametrize("T", [1, 2, 7])
@pytest.mark.parametrize("residual", [False, True], ids=["layer0", "v_lora"])
def test_wkv7_prepare(H, N, T, residual):
    D = H * N
    inputs = _wkv7_inputs(_rng("prep", H, N, T, residual), H, N, T, residual)
    expected = (_wkv7_prepare_ref(H, N, *inputs),)
    check(lambda nt: run_op(lib.RWKV_TESTING_OP_WKV7_PREPARE, inputs, (4, T, D), D, T, nt, n_head=H,
                            head_size=N)[:1], expected)


@pytest.mark.parametrize("H,N", HEADS)
@pytest.mark.parametrize("T", [1, 2, 7])
def test_wkv7(H, N, T):
    D = H * N
    rng = _rng("wkv7", H, N, T)
    prep = _f32(_wkv7_prepare_ref(H, N, *_wkv7_inputs(rng, H, N, T, True))).astype(np.float64)
    r, w_lora = (_f32(rng.standard_normal((T, D))).astype(np.float64) for _ in range(2))
    w0, r_k, lnx_w, lnx_b = (_f32(rng.standard_normal(D)).astype(np.float64) for _ in range(4))
    state = _f32(rng.standard_normal((H, N, N))).astype(np.float64)
    kk, kp, vp, a = prep
    w = np.exp(-ref.V7_DECAY_SCALE * ref.sigmoid(w0 + w_lora))
    S, out = state.copy(), np.empty((T, D))
    for t in range(T):
        y = np.empty(D)
        for h in range(H):
            c = slice(h * N, (h + 1) * N)
            y[c], S[h] = ref.wkv7_head(r[t, c], w[t, c], kp[t, c], vp[t, c], kk[t, c], a[t, c], S[h])
        bonus = (r[t] * kp[t] * r_k).reshape(H, N).sum(axis=1, keepdims=True) * vp[t].reshape(H, N)
        out[t] = ref.group_norm(y, H, lnx_w, lnx_b, ref.LN_X_EPS) + bonus.reshape(-1)
    inputs = [r, w_lora, w0, prep, r_k, lnx_w, lnx_b, state.reshape(-1)]

    def run(nt):
        res = run_op(lib.RWKV_TESTING_OP_WKV7, inputs, (T + N, D), D, T, nt, n_head=H, head_size=N,
                     eps=ref.LN_X_EPS)[0]
        return res[:T], res[T:].reshape(H, N, N)

    check(run, (out, S))


# ---- exp_poly: the kernels' vectorisable exp ---------------------------------

def _exp_poly(x):
    x = _f32(x)
    y = np.full_like(x, np.nan)
    lib.rwkv_testing_exp_poly(ffi.cast("float *", ffi.from_buffer(x)), ffi.cast("float *", ffi.from_buffer(y)), x.size)
    return y


def test_exp_poly_within_one_ulp():
    """Every 61st float of [-104.5, 89.5] (about 36M, subnormal and overflowing
    results included) against float64 exp rounded to float32: at most 1 ulp
    apart (a sweep of every float there, at each instruction set the library
    is built for, measured the same bound)."""
    stride = 61
    for lo, hi in ((0.0, 89.5), (-0.0, -104.5)):
        bits = np.arange(int(np.float32(lo).view(np.uint32)), int(np.float32(hi).view(np.uint32)) + 1, stride,
                         dtype=np.uint32)
        x = bits.view(np.float32)
        got = _exp_poly(x)
        with np.errstate(over="ignore"):
            want = np.exp(x.astype(np.float64)).astype(np.float32)
        ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32))
        assert ulps.max() <= 1, (x[ulps.argmax()], got[ulps.argmax()], want[ulps.argmax()])


def test_exp_poly_special_values():
    x = np.array([np.inf, -np.inf, np.nan, 89.0, 88.72283, 88.72284, -87.33655, -103.972, -104.0, -1e30, 1e30, 0.0,
                  -0.0, 1e-45], np.float32)
    with np.errstate(over="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)
    got = _exp_poly(x)
    assert np.isnan(got[2]) and np.array_equal(np.delete(got, 2), np.delete(want, 2)), (got, want)
    assert np.isinf(got[0]) and got[1] == 0 and got[-6] == 0 and got[-5] == 0  # e^-104 rounds to +0


# ---- element-wise ---------------------------------------------------------

ELEMENTWISE_SHAPES = [(1, 1), (13, 1), (15, 2), (40, 7), (1000, 3)]


@pytest.mark.parametrize("D,T", ELEMENTWISE_SHAPES)
def test_relu_sq(D, T):
    x = _f32(_rng("relu", D, T).standard_normal((T, D))).astype(np.float64)
    check(lambda nt: run_op(lib.RWKV_TESTING_OP_RELU_SQ, [x], (T, D), D, T, nt)[:1], (np.maximum(x, 0) ** 2,))


@pytest.mark.parametrize("D,T", ELEMENTWISE_SHAPES)
def test_gated_residual(D, T):
    rng = _rng("gated", D, T)
    x, r, v = (_f32(rng.standard_normal((T, D))).astype(np.float64) for _ in range(3))
    check(lambda nt: run_op(lib.RWKV_TESTING_OP_GATED_RESIDUAL, [x, r, v], (T, D), D, T, nt)[:1],
          (x + ref.sigmoid(r) * v,))


# ---- the hook refuses what the ops would abort on -------------------------


def test_bad_arguments_are_refused():
    D, T = 8, 2
    x = np.zeros((T, D), np.float32)
    vec = np.zeros(D, np.float32)

    def status(op, inputs, out_len, **kw):
        args = ffi.new("struct rwkv_testing_op_args *")
        args.n_embed, args.n_tokens, args.n_threads = kw.get("D", D), T, kw.get("threads", 1)
        args.n_head, args.head_size, args.n_mix = kw.get("H", 0), kw.get("N", 0), kw.get("n_mix", 0)
        for i, a in enumerate(inputs):
            args.inputs[i] = ffi.NULL if a is None else ffi.cast("float *", ffi.from_buffer(a))
        out = np.zeros(max(out_len, 1), np.float32)
        args.out, args.out_len = ffi.cast("float *", ffi.from_buffer(out)), out_len
        return lib.rwkv_testing_run_op(op, args)

    assert status(lib.RWKV_TESTING_OP_RELU_SQ, [x], D * T) == 0
    assert status(lib.RWKV_TESTING_OP_RELU_SQ, [x], D * T - 1) != 0  # wrong output length
    assert status(lib.RWKV_TESTING_OP_RELU_SQ, [None], D * T) != 0  # missing input
    assert status(lib.RWKV_TESTING_OP_RELU_SQ, [x, x], D * T) != 0  # an input too many
    assert status(lib.RWKV_TESTING_OP_RELU_SQ, [x], D * T, threads=0) != 0
    assert status(99, [x], D * T) != 0
    assert status(lib.RWKV_TESTING_OP_SHIFT_MIX_ADD_DELTA, [x, vec] + [vec] * 8, D * T * 8, n_mix=8) != 0
    assert status(lib.RWKV_TESTING_OP_LN_SHIFT_MIX, [x, vec, vec, vec, vec], D * T, n_mix=1) != 0  # no side_out
    wkv5 = [x, x, x, vec, None, vec, vec, vec, np.zeros(D * 4, np.float32)]
    assert status(lib.RWKV_TESTING_OP_WKV5, wkv5, D * (T + 4), H=2, N=4) == 0
    assert status(lib.RWKV_TESTING_OP_WKV5, wkv5, D * (T + 4), H=3, N=4) != 0  # H * N != D
    prep = [x, x, x, vec, vec, vec, x, None, x]  # v_lora and v_first without v0
    assert status(lib.RWKV_TESTING_OP_WKV7_PREPARE, prep, D * T * 4, H=2, N=4) != 0
