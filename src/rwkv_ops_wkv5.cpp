// RWKV-5/6 WKV with ln_x (rwkv_ops.h): wkv5.  The recurrence is the
// official one (rwkv/model.py: att_one_v5_1, att_one_v6_0).
#include "rwkv_ops.h"
#include "rwkv_ops_util.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace rwkv {

using ops::check_f32;
using ops::exp_poly;
using ops::f32;
using ops::f32_mut;
using ops::group_norm_head;
using ops::Range;
using ops::check_rows_f32;
using ops::check_seqs;
using ops::row_f32;
using ops::Seqs;
using ops::thread_range;

namespace {

// Sources of the wkv5 node.  DECAY is w [D] (v5) or the per-token
// log-log decay [D, T] (v6); SEQS may be null.
enum Wkv5Src { R, K, V, DECAY, BONUS, LNX_W, LNX_B, STATE, SEQS, N_SRC };

// One token of one head, S indexed [key i][value j] (att_one_v5_1):
//   a = k @ v (outer);  out = r @ (u * a + S);  S = a + w * S
// W: the head size when known at compile time (64 in every RWKV-5/6 model:
// v and the sums then stay in vector registers), 0 for n at run time; the
// same arithmetic either way.
template <int64_t W>
RWKV_INLINE_IN_CLONES void wkv5_step(int64_t n, const float * r, const float * k, const float * v, const float * w,
                                     const float * u, float * S, float * y) {
    const int64_t N = W > 0 ? W : n;
    float local[2 * (W > 0 ? W : 1)];
    float * acc = W > 0 ? local : y;
    const float * vv = v;
    if (W > 0) {
        std::copy(v, v + W, local + W);
        vv = local + W;
    }
    std::fill(acc, acc + N, 0.0f);
    for (int64_t i = 0; i < N; ++i) {
        const float ri = r[i], ki = k[i], ui = u[i], wi = w[i];
        float * row = S + i * N;
        for (int64_t j = 0; j < N; ++j) {
            const float a = ki * vv[j];
            acc[j] += ri * (ui * a + row[j]);
            row[j] = a + wi * row[j];
        }
    }
    if (W > 0) {
        std::copy(acc, acc + W, y);
    }
}

// The decay of head h at token t: the stored exp(-exp(time_decay)) (v5),
// or exp(-exp(time_decay + lora)) of this token (v6, att_one_v6_0).
template <bool PER_TOKEN>
RWKV_INLINE_IN_CLONES void wkv5_decay(const ggml_tensor * dst, int64_t D, int64_t N, int64_t h, int64_t t,
                                      float * w) {
    if (!PER_TOKEN) {
        const float * decay = f32(dst->src[DECAY]) + h * N;
        std::copy(decay, decay + N, w);
        return;
    }
    const float * decay = f32(dst->src[DECAY]) + t * D + h * N;
    for (int64_t i = 0; i < N; ++i) {
        w[i] = exp_poly(-exp_poly(decay[i]));
    }
}

// The arrays of a wkv5 node ([D, T] ones indexed by the column c0 = t * D +
// h * N of head h at token t).
struct Wkv5Arrays {
    int64_t D, N;
    const float *r, *k, *v, *u, *lnx_w, *lnx_b;
    float eps;
    float * out;
};

// Head h of the tokens [t0, t1) of one sequence, its state S updated in
// place: the same arithmetic for a token alone or in a run, so that decode,
// prefill and every batch split give the same bits.  scratch: 2 * N floats.
template <bool PER_TOKEN>
RWKV_OPS_CLONES void wkv5_head(const ggml_tensor * dst, const Wkv5Arrays & in, int64_t h, int64_t t0, int64_t t1,
                               float * S, float * scratch) {
    const int64_t N = in.N;
    float *w = scratch, *y = scratch + N;
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * in.D + h * N;
        wkv5_decay<PER_TOKEN>(dst, in.D, N, h, t, w);
        if (N == 64) {
            wkv5_step<64>(N, in.r + c0, in.k + c0, in.v + c0, w, in.u + h * N, S, y);
        } else {
            wkv5_step<0>(N, in.r + c0, in.k + c0, in.v + c0, w, in.u + h * N, S, y);
        }
        group_norm_head(N, y, in.lnx_w + h * N, in.lnx_b + h * N, in.eps, in.out + c0);
    }
}

// dst [D, T + N * n_seqs]; (sequence, head) pairs are split between
// threads, the new state of sequence s follows the T output columns as N
// columns.  Padding columns are zero.  userdata: the ln_x eps.
template <bool PER_TOKEN>
void wkv5_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const int64_t D = dst->ne[0], T = dst->src[R]->ne[1];
    const Seqs seqs(dst->src[SEQS], T);
    const int64_t N = (dst->ne[1] - T) / seqs.n(), H = D / N;
    const Wkv5Arrays in{D,
                        N,
                        f32(dst->src[R]),
                        f32(dst->src[K]),
                        f32(dst->src[V]),
                        f32(dst->src[BONUS]),
                        f32(dst->src[LNX_W]),
                        f32(dst->src[LNX_B]),
                        *static_cast<const float *>(userdata),
                        f32_mut(dst)};
    std::vector<float> scratch(2 * N);
    const Range items = thread_range(seqs.n() * H, ith, nth);
    for (int64_t p = items.begin; p < items.end; ++p) {
        const int64_t s = p / H, h = p % H;
        float * S = in.out + (T + s * N) * D + h * N * N;
        std::memcpy(S, row_f32(dst->src[STATE], s) + h * N * N, N * N * sizeof(float));
        wkv5_head<PER_TOKEN>(dst, in, h, seqs.begin(s), seqs.end(s), S, scratch.data());
    }
    const Range pad = thread_range(D, ith, nth, ops::CHANNEL_BLOCK);
    for (int64_t t = seqs.used(); t < T; ++t) {
        std::fill(in.out + t * D + pad.begin, in.out + t * D + pad.end, 0.0f);
    }
}

}  // namespace

ggml_tensor * wkv5(ggml_context * ctx, int64_t n_head, int64_t head_size, const float * ln_x_eps, ggml_tensor * r,
                   ggml_tensor * k, ggml_tensor * v, ggml_tensor * decay, bool decay_per_token, ggml_tensor * bonus,
                   ggml_tensor * lnx_w, ggml_tensor * lnx_b, ggml_tensor * state, ggml_tensor * seqs) {
    const int64_t D = r->ne[0], N = head_size, T = r->ne[1], S = seqs == nullptr ? 1 : ggml_nelements(seqs) - 1;
    GGML_ASSERT(n_head >= 1 && head_size >= 1 && n_head * head_size == D);
    for (ggml_tensor * t : {r, k, v}) {
        check_f32(t, D * T);
    }
    check_f32(decay, decay_per_token ? D * T : D);
    for (ggml_tensor * t : {bonus, lnx_w, lnx_b}) {
        check_f32(t, D);
    }
    check_seqs(seqs, S);
    check_rows_f32(state, D * N, S);
    ggml_tensor * args[N_SRC] = {r, k, v, decay, bonus, lnx_w, lnx_b, state, seqs};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T + N * S, 1, 1, args, N_SRC,
                          decay_per_token ? wkv5_compute<true> : wkv5_compute<false>, GGML_N_TASKS_MAX,
                          const_cast<float *>(ln_x_eps));
}

}  // namespace rwkv
