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
using ops::row_f32;
using ops::row_f32_mut;
using ops::Seqs;
using ops::check_rows_f32;
using ops::check_seqs;
using ops::thread_range;

static_assert(6 + LN_SHIFT_MIX_MAX < GGML_MAX_SRC && 3 + SHIFT_MIX_MAX < GGML_MAX_SRC &&
                  4 + SHIFT_MIX_LORA_N < GGML_MAX_SRC,
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

// The sequence of column t (rwkv_ops_util.h Seqs), n() for a padding column.
int64_t seq_of(const Seqs & seqs, int64_t t) {
    int64_t lo = 0, hi = seqs.n();  // the first s with end(s) > t
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (seqs.end(mid) > t) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return lo;
}

// src: 0 x, 1 w, 2 b, 3 x_prev, 4 x_prev_out, 5 seqs (or null), 6.. mixes.
// Tokens are split between threads; a thread recomputes the layer norm of
// the token before its first one (its sx) unless that one starts a sequence.
void ln_shift_mix_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * x = dst->src[0];
    const int D = static_cast<int>(x->ne[0]);
    const int64_t T = x->ne[1];
    const int n_mix = static_cast<int>(dst->ne[1] / T);
    const float eps = *static_cast<const float *>(userdata);
    const Seqs seqs(dst->src[5], T);
    const Range tokens = thread_range(T, ith, nth);
    if (tokens.begin >= tokens.end) return;
    std::vector<float> buf(2 * static_cast<size_t>(D));
    float * prev = buf.data();
    float * cur = prev + D;
    const float * w = f32(dst->src[1]);
    const float * b = f32(dst->src[2]);
    float * out = f32_mut(dst);
    for (int64_t t = tokens.begin; t < tokens.end; ++t) {
        const int64_t s = seq_of(seqs, t);
        const bool starts = s < seqs.n() && t == seqs.begin(s);
        if (starts || t == 0) {
            const float * x_prev = row_f32(dst->src[3], starts ? s : 0);
            std::copy(x_prev, x_prev + D, prev);
        } else if (t == tokens.begin) {
            layer_norm_column(f32(x) + (t - 1) * D, w, b, eps, D, prev);
        }
        layer_norm_column(f32(x) + t * D, w, b, eps, D, cur);
        for (int m = 0; m < n_mix; ++m) {
            const float * mu = f32(dst->src[6 + m]);
            float * o = out + (m * T + t) * D;
            for (int i = 0; i < D; ++i) o[i] = prev[i] + (cur[i] - prev[i]) * mu[i];
        }
        if (s < seqs.n() && t == seqs.end(s) - 1) {
            std::copy(cur, cur + D, row_f32_mut(dst->src[4], s));
        }
        std::swap(prev, cur);
    }
}

// Calls f(t, prev) for every column t of x [D, T] with the column before it
// in its sequence: the sequence's x_prev row at its first column, else
// column t - 1 (a padding column follows the column before it).
template <class F>
void for_each_column(const Seqs & seqs, const float * x, const ggml_tensor * x_prev, int64_t D, int64_t T, F && f) {
    for (int64_t s = 0; s < seqs.n(); ++s) {
        for (int64_t t = seqs.begin(s); t < seqs.end(s); ++t) {
            f(t, t == seqs.begin(s) ? row_f32(x_prev, s) : x + (t - 1) * D);
        }
    }
    for (int64_t t = seqs.used(); t < T; ++t) {
        f(t, t == 0 ? row_f32(x_prev, 0) : x + (t - 1) * D);
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

// src: 0 xx, 1 x_prev, 2 seqs (or null), 3.. mu.  Channels are split
// between threads.
template <MixForm F>
void shift_mix_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * xx = dst->src[0];
    const int64_t D = xx->ne[0], T = xx->ne[1], n = dst->ne[2];
    const float * x = f32(xx);
    const Seqs seqs(dst->src[2], T);
    const Range c = thread_range(D, ith, nth);
    for (int64_t i = 0; i < n; ++i) {
        const float * mu = f32(dst->src[3 + i]);
        float * out = f32_mut(dst) + i * D * T;
        for_each_column(seqs, x, dst->src[1], D, T, [&](int64_t t, const float * prev) {
            const float * cur = x + t * D;
            float * o = out + t * D;
            for (int64_t ch = c.begin; ch < c.end; ++ch) {
                o[ch] = mix<F>(cur[ch], prev[ch], mu[ch]);
            }
        });
    }
}

// src: 0 xx, 1 x_prev, 2 seqs (or null), 3 m, 4.. maa:
//   out[i] = xx + (sx - xx) * (maa[i] + m[i])
void shift_mix_lora_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * xx = dst->src[0];
    const int64_t D = xx->ne[0], T = xx->ne[1], n = dst->ne[2];
    const float * x = f32(xx);
    const float * m = f32(dst->src[3]);
    const Seqs seqs(dst->src[2], T);
    const Range c = thread_range(D, ith, nth);
    for (int64_t i = 0; i < n; ++i) {
        const float * maa = f32(dst->src[4 + i]);
        for_each_column(seqs, x, dst->src[1], D, T, [&](int64_t t, const float * prev) {
            const float * cur = x + t * D;
            const float * mi = m + (i * T + t) * D;
            float * o = f32_mut(dst) + (i * T + t) * D;
            for (int64_t ch = c.begin; ch < c.end; ++ch) {
                o[ch] = cur[ch] + (prev[ch] - cur[ch]) * (maa[ch] + mi[ch]);
            }
        });
    }
}

}  // namespace

ggml_tensor * ln_shift_mix(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b,
                           ggml_tensor * x_prev, ggml_tensor * x_prev_out, ggml_tensor * seqs,
                           ggml_tensor * const * mixes, int n_mix, const float * eps) {
    GGML_ASSERT(n_mix >= 1 && n_mix <= LN_SHIFT_MIX_MAX);
    GGML_ASSERT(x->type == GGML_TYPE_F32 && ggml_is_contiguous(x));
    const int64_t D = x->ne[0], T = x->ne[1], S = seqs == nullptr ? 1 : ggml_nelements(seqs) - 1;
    GGML_ASSERT(ggml_nelements(w) == D && ggml_nelements(b) == D);
    check_seqs(seqs, S);
    check_rows_f32(x_prev, D, S);
    check_rows_f32(x_prev_out, D, S);
    ggml_tensor * args[6 + LN_SHIFT_MIX_MAX] = {x, w, b, x_prev, x_prev_out, seqs};
    for (int m = 0; m < n_mix; ++m) {
        GGML_ASSERT(ggml_nelements(mixes[m]) == D);
        args[6 + m] = mixes[m];
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, n_mix * T, 1, 1, args, 6 + n_mix, ln_shift_mix_compute,
                          GGML_N_TASKS_MAX, const_cast<float *>(eps));
}

ggml_tensor * shift_mix(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * seqs,
                        ggml_tensor * const * mu, int n, MixForm form) {
    GGML_ASSERT(n >= 1 && n <= SHIFT_MIX_MAX);
    const int64_t D = xx->ne[0], T = xx->ne[1], S = seqs == nullptr ? 1 : ggml_nelements(seqs) - 1;
    check_f32(xx, D * T);
    check_seqs(seqs, S);
    check_rows_f32(x_prev, D, S);
    ggml_tensor * args[3 + SHIFT_MIX_MAX] = {xx, x_prev, seqs};
    for (int i = 0; i < n; ++i) {
        check_f32(mu[i], D);
        args[3 + i] = mu[i];
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T, n, 1, args, 3 + n,
                          form == MixForm::WeightedSum ? shift_mix_compute<MixForm::WeightedSum>
                                                       : shift_mix_compute<MixForm::AddDelta>,
                          GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * shift_mix_lora(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * seqs,
                             ggml_tensor * m, ggml_tensor * const * maa) {
    const int64_t D = xx->ne[0], T = xx->ne[1], S = seqs == nullptr ? 1 : ggml_nelements(seqs) - 1;
    check_f32(xx, D * T);
    check_seqs(seqs, S);
    check_rows_f32(x_prev, D, S);
    check_f32(m, D * T * SHIFT_MIX_LORA_N);
    ggml_tensor * args[4 + SHIFT_MIX_LORA_N] = {xx, x_prev, seqs, m};
    for (int i = 0; i < SHIFT_MIX_LORA_N; ++i) {
        check_f32(maa[i], D);
        args[4 + i] = maa[i];
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T, SHIFT_MIX_LORA_N, 1, args, 4 + SHIFT_MIX_LORA_N,
                          shift_mix_lora_compute, GGML_N_TASKS_MAX, nullptr);
}

}  // namespace rwkv
