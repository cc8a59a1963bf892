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
using ops::exp_f32;
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
void wkv5_step(int64_t N, const float * r, const float * k, const float * v, const float * w, const float * u,
               float * S, float * y) {
    std::fill(y, y + N, 0.0f);
    for (int64_t i = 0; i < N; ++i) {
        const float ri = r[i], ki = k[i], ui = u[i], wi = w[i];
        float * row = S + i * N;
        for (int64_t j = 0; j < N; ++j) {
            const float a = ki * v[j];
            y[j] += ri * (ui * a + row[j]);
            row[j] = a + wi * row[j];
        }
    }
}

// The decay of head h at token t: the stored exp(-exp(time_decay)) (v5),
// or exp(-exp(time_decay + lora)) of this token (v6, att_one_v6_0).
template <bool PER_TOKEN>
void wkv5_decay(const ggml_tensor * dst, int64_t D, int64_t N, int64_t h, int64_t t, float * w) {
    if (!PER_TOKEN) {
        const float * decay = f32(dst->src[DECAY]) + h * N;
        std::copy(decay, decay + N, w);
        return;
    }
    const float * decay = f32(dst->src[DECAY]) + t * D + h * N;
    for (int64_t i = 0; i < N; ++i) {
        w[i] = exp_f32(-exp_f32(decay[i]));
    }
}

// dst [D, T + N * n_seqs]; (sequence, head) pairs are split between
// threads, the new state of sequence s follows the T output columns as N
// columns.  Padding columns are zero.  userdata: the ln_x eps.
template <bool PER_TOKEN>
void wkv5_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const float eps = *static_cast<const float *>(userdata);
    const int64_t D = dst->ne[0], T = dst->src[R]->ne[1];
    const Seqs seqs(dst->src[SEQS], T);
    const int64_t N = (dst->ne[1] - T) / seqs.n(), H = D / N;
    const float *r = f32(dst->src[R]), *k = f32(dst->src[K]), *v = f32(dst->src[V]), *u = f32(dst->src[BONUS]);
    const float *lnx_w = f32(dst->src[LNX_W]), *lnx_b = f32(dst->src[LNX_B]);
    float * out = f32_mut(dst);
    std::vector<float> w(N), y(N);
    const Range items = thread_range(seqs.n() * H, ith, nth);
    for (int64_t p = items.begin; p < items.end; ++p) {
        const int64_t s = p / H, h = p % H;
        float * S = out + (T + s * N) * D + h * N * N;
        std::memcpy(S, row_f32(dst->src[STATE], s) + h * N * N, N * N * sizeof(float));
        for (int64_t t = seqs.begin(s); t < seqs.end(s); ++t) {
            const int64_t c0 = t * D + h * N;
            wkv5_decay<PER_TOKEN>(dst, D, N, h, t, w.data());
            wkv5_step(N, r + c0, k + c0, v + c0, w.data(), u + h * N, S, y.data());
            group_norm_head(N, y.data(), lnx_w + h * N, lnx_b + h * N, eps, out + c0);
        }
    }
    const Range pad = thread_range(D, ith, nth, ops::CHANNEL_BLOCK);
    for (int64_t t = seqs.used(); t < T; ++t) {
        std::fill(out + t * D + pad.begin, out + t * D + pad.end, 0.0f);
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
