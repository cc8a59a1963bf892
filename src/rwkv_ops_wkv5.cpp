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
using ops::f32;
using ops::f32_mut;
using ops::group_norm_head;
using ops::Range;
using ops::thread_range;

namespace {

// Sources of the wkv5 node.
enum Wkv5Src { R, K, V, DECAY, BONUS, LNX_W, LNX_B, STATE, DECAY_LORA, N_SRC };

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
void wkv5_decay(const ggml_tensor * dst, int64_t D, int64_t N, int64_t h, int64_t t, float * w) {
    const float * decay = f32(dst->src[DECAY]) + h * N;
    if (dst->src[DECAY_LORA] == nullptr) {
        std::copy(decay, decay + N, w);
        return;
    }
    const float * lora = f32(dst->src[DECAY_LORA]) + t * D + h * N;
    for (int64_t i = 0; i < N; ++i) {
        w[i] = std::exp(-std::exp(decay[i] + lora[i]));
    }
}

// dst [D, T + N]; heads are split between threads.  userdata: the ln_x eps.
void wkv5_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const float eps = *static_cast<const float *>(userdata);
    const int64_t D = dst->ne[0], T = dst->src[R]->ne[1], N = dst->ne[1] - T;
    const float *r = f32(dst->src[R]), *k = f32(dst->src[K]), *v = f32(dst->src[V]), *u = f32(dst->src[BONUS]);
    const float *lnx_w = f32(dst->src[LNX_W]), *lnx_b = f32(dst->src[LNX_B]);
    float * out = f32_mut(dst);
    std::vector<float> w(N), y(N);
    const Range heads = thread_range(D / N, ith, nth);
    for (int64_t h = heads.begin; h < heads.end; ++h) {
        float * S = out + T * D + h * N * N;
        std::memcpy(S, f32(dst->src[STATE]) + h * N * N, N * N * sizeof(float));
        for (int64_t t = 0; t < T; ++t) {
            const int64_t c0 = t * D + h * N;
            wkv5_decay(dst, D, N, h, t, w.data());
            wkv5_step(N, r + c0, k + c0, v + c0, w.data(), u + h * N, S, y.data());
            group_norm_head(N, y.data(), lnx_w + h * N, lnx_b + h * N, eps, out + c0);
        }
    }
}

}  // namespace

ggml_tensor * wkv5(ggml_context * ctx, int64_t n_head, int64_t head_size, const float * ln_x_eps, ggml_tensor * r,
                   ggml_tensor * k, ggml_tensor * v, ggml_tensor * decay, ggml_tensor * decay_lora,
                   ggml_tensor * bonus, ggml_tensor * lnx_w, ggml_tensor * lnx_b, ggml_tensor * state) {
    const int64_t D = r->ne[0], N = head_size, T = r->ne[1];
    GGML_ASSERT(n_head >= 1 && head_size >= 1 && n_head * head_size == D);
    for (ggml_tensor * t : {r, k, v}) {
        check_f32(t, D * T);
    }
    for (ggml_tensor * t : {decay, bonus, lnx_w, lnx_b}) {
        check_f32(t, D);
    }
    check_f32(state, D * N);
    ggml_tensor * args[N_SRC] = {r, k, v, decay, bonus, lnx_w, lnx_b, state, decay_lora};
    if (decay_lora != nullptr) {
        check_f32(decay_lora, D * T);
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T + N, 1, 1, args, decay_lora != nullptr ? N_SRC : N_SRC - 1,
                          wkv5_compute, GGML_N_TASKS_MAX, const_cast<float *>(ln_x_eps));
}

}  // namespace rwkv
