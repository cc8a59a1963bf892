// Token-shift mixes (rwkv_ops.h): ln_shift_mix, shift_mix, shift_mix_lora.
#include "rwkv_ops.h"
#include "rwkv_ops_util.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace rwkv {

using ops::check_f32;
using ops::f32;
using ops::f32_mut;
using ops::Range;
using ops::thread_range;

static_assert(5 + LN_SHIFT_MIX_MAX < GGML_MAX_SRC && 2 + SHIFT_MIX_MAX < GGML_MAX_SRC &&
                  3 + SHIFT_MIX_LORA_N < GGML_MAX_SRC,
              "ggml_custom_4d takes fewer than GGML_MAX_SRC sources");

namespace {

// ---------------------------------------------------------------------------
// ln_shift_mix
// ---------------------------------------------------------------------------

// xx = (x - mean) / sqrt(var + eps) * w + b, accumulating in double as
// ggml_norm does.
void layer_norm_column(const float * x, const float * w, const float * b, float eps, int D, float * xx) {
    double sum = 0.0;
    for (int i = 0; i < D; ++i) sum += x[i];
    const float mean = static_cast<float>(sum / D);
    double sq = 0.0;
    for (int i = 0; i < D; ++i) {
        const float d = x[i] - mean;
        sq += static_cast<double>(d) * d;
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(sq / D) + eps);
    for (int i = 0; i < D; ++i) xx[i] = (x[i] - mean) * scale * w[i] + b[i];
}

// src: 0 x, 1 w, 2 b, 3 x_prev, 4 x_prev_out, 5.. mixes.  Tokens are split
// between threads; a thread recomputes the layer norm of the token before
// its first one (its sx).
void ln_shift_mix_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * x = dst->src[0];
    const int D = static_cast<int>(x->ne[0]);
    const int T = static_cast<int>(x->ne[1]);
    const int n_mix = static_cast<int>(dst->ne[1] / T);
    const float eps = *static_cast<const float *>(userdata);
    const Range tokens = thread_range(T, ith, nth);
    const int t0 = static_cast<int>(tokens.begin), t1 = static_cast<int>(tokens.end);
    if (t0 >= t1) return;
    std::vector<float> buf(2 * static_cast<size_t>(D));
    float * prev = buf.data();
    float * cur = prev + D;
    const float * w = f32(dst->src[1]);
    const float * b = f32(dst->src[2]);
    if (t0 == 0) {
        std::copy(f32(dst->src[3]), f32(dst->src[3]) + D, prev);
    } else {
        layer_norm_column(f32(x) + static_cast<size_t>(t0 - 1) * D, w, b, eps, D, prev);
    }
    float * out = f32_mut(dst);
    for (int t = t0; t < t1; ++t) {
        layer_norm_column(f32(x) + static_cast<size_t>(t) * D, w, b, eps, D, cur);
        for (int m = 0; m < n_mix; ++m) {
            const float * mu = f32(dst->src[5 + m]);
            float * o = out + (static_cast<size_t>(m) * T + t) * D;
            for (int i = 0; i < D; ++i) o[i] = prev[i] + (cur[i] - prev[i]) * mu[i];
        }
        std::swap(prev, cur);
    }
    if (t1 == T) {
        std::copy(prev, prev + D, f32_mut(dst->src[4]));
    }
}

// ---------------------------------------------------------------------------
// shift_mix, shift_mix_lora
// ---------------------------------------------------------------------------

template <MixForm F>
float mix(float xx, float sx, float mu);

template <>
float mix<MixForm::WeightedSum>(float xx, float sx, float mu) {
    return xx * mu + sx * (1.0f - mu);
}

template <>
float mix<MixForm::AddDelta>(float xx, float sx, float mu) {
    return xx + (sx - xx) * mu;
}

// src: 0 xx, 1 x_prev, 2.. mu.  Channels are split between threads.
template <MixForm F>
void shift_mix_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * xx = dst->src[0];
    const int64_t D = xx->ne[0], T = xx->ne[1], n = dst->ne[2];
    const float * x = f32(xx);
    const Range c = thread_range(D, ith, nth);
    for (int64_t i = 0; i < n; ++i) {
        const float * mu = f32(dst->src[2 + i]);
        float * out = f32_mut(dst) + i * D * T;
        for (int64_t t = 0; t < T; ++t) {
            const float * cur = x + t * D;
            const float * prev = t == 0 ? f32(dst->src[1]) : cur - D;
            float * o = out + t * D;
            for (int64_t ch = c.begin; ch < c.end; ++ch) {
                o[ch] = mix<F>(cur[ch], prev[ch], mu[ch]);
            }
        }
    }
}

// src: 0 xx, 1 x_prev, 2 m, 3.. maa:  out[i] = xx + (sx - xx) * (maa[i] + m[i])
void shift_mix_lora_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * xx = dst->src[0];
    const int64_t D = xx->ne[0], T = xx->ne[1], n = dst->ne[2];
    const float * x = f32(xx);
    const float * m = f32(dst->src[2]);
    const Range c = thread_range(D, ith, nth);
    for (int64_t i = 0; i < n; ++i) {
        const float * maa = f32(dst->src[3 + i]);
        for (int64_t t = 0; t < T; ++t) {
            const float * cur = x + t * D;
            const float * prev = t == 0 ? f32(dst->src[1]) : cur - D;
            const float * mi = m + (i * T + t) * D;
            float * o = f32_mut(dst) + (i * T + t) * D;
            for (int64_t ch = c.begin; ch < c.end; ++ch) {
                o[ch] = cur[ch] + (prev[ch] - cur[ch]) * (maa[ch] + mi[ch]);
            }
        }
    }
}

}  // namespace

ggml_tensor * ln_shift_mix(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b,
                           ggml_tensor * x_prev, ggml_tensor * x_prev_out, ggml_tensor * const * mixes, int n_mix,
                           const float * eps) {
    GGML_ASSERT(n_mix >= 1 && n_mix <= LN_SHIFT_MIX_MAX);
    GGML_ASSERT(x->type == GGML_TYPE_F32 && ggml_is_contiguous(x));
    const int64_t D = x->ne[0], T = x->ne[1];
    GGML_ASSERT(ggml_nelements(w) == D && ggml_nelements(b) == D && ggml_nelements(x_prev) == D &&
                ggml_nelements(x_prev_out) == D && ggml_is_contiguous(x_prev_out));
    ggml_tensor * args[5 + LN_SHIFT_MIX_MAX] = {x, w, b, x_prev, x_prev_out};
    for (int m = 0; m < n_mix; ++m) {
        GGML_ASSERT(ggml_nelements(mixes[m]) == D);
        args[5 + m] = mixes[m];
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, n_mix * T, 1, 1, args, 5 + n_mix, ln_shift_mix_compute,
                          GGML_N_TASKS_MAX, const_cast<float *>(eps));
}

ggml_tensor * shift_mix(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * const * mu, int n,
                        MixForm form) {
    GGML_ASSERT(n >= 1 && n <= SHIFT_MIX_MAX);
    const int64_t D = xx->ne[0], T = xx->ne[1];
    check_f32(xx, D * T);
    check_f32(x_prev, D);
    ggml_tensor * args[2 + SHIFT_MIX_MAX] = {xx, x_prev};
    for (int i = 0; i < n; ++i) {
        check_f32(mu[i], D);
        args[2 + i] = mu[i];
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T, n, 1, args, 2 + n,
                          form == MixForm::WeightedSum ? shift_mix_compute<MixForm::WeightedSum>
                                                       : shift_mix_compute<MixForm::AddDelta>,
                          GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * shift_mix_lora(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * m,
                             ggml_tensor * const * maa) {
    const int64_t D = xx->ne[0], T = xx->ne[1];
    check_f32(xx, D * T);
    check_f32(x_prev, D);
    check_f32(m, D * T * SHIFT_MIX_LORA_N);
    ggml_tensor * args[3 + SHIFT_MIX_LORA_N] = {xx, x_prev, m};
    for (int i = 0; i < SHIFT_MIX_LORA_N; ++i) {
        check_f32(maa[i], D);
        args[3 + i] = maa[i];
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T, SHIFT_MIX_LORA_N, 1, args, 3 + SHIFT_MIX_LORA_N,
                          shift_mix_lora_compute, GGML_N_TASKS_MAX, nullptr);
}

}  // namespace rwkv
