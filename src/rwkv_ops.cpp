#include "rwkv_ops.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace rwkv {

namespace {

constexpr int CHANNEL_BLOCK = 16;  // one cache line of floats per thread boundary

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

const float * f32(const ggml_tensor * t) { return static_cast<const float *>(t->data); }
float * f32_mut(const ggml_tensor * t) { return static_cast<float *>(t->data); }

// [begin, end) of n items for thread ith of nth, in blocks of `block`.
void split(int n, int ith, int nth, int block, int & begin, int & end) {
    const int n_blocks = (n + block - 1) / block;
    const int per_thread = (n_blocks + nth - 1) / nth;
    begin = std::min(n, ith * per_thread * block);
    end = std::min(n, (ith + 1) * per_thread * block);
}

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

// src: 0 x, 1 w, 2 b, 3 x_prev, 4 x_prev_out, 5.. mixes
void ln_shift_mix_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ggml_tensor * x = dst->src[0];
    const int D = static_cast<int>(x->ne[0]);
    const int T = static_cast<int>(x->ne[1]);
    const int n_mix = static_cast<int>(dst->ne[1] / T);
    const float eps = *static_cast<const float *>(userdata);
    int t0, t1;
    split(T, ith, nth, 1, t0, t1);
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

// src: 0 k, 1 v, 2 r, 3 first, 4 decay, 5 state_in, 6 state_out
void wkv4_gated_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * k = dst->src[0];
    const int A = static_cast<int>(k->ne[0]);
    const int T = static_cast<int>(k->ne[1]);
    int c0, c1;
    split(A, ith, nth, CHANNEL_BLOCK, c0, c1);
    if (c0 >= c1) return;
    wkv4_kernel(A, T, c0, c1, f32(k), f32(dst->src[1]), f32(dst->src[2]), f32(dst->src[3]), f32(dst->src[4]),
                f32(dst->src[5]), f32_mut(dst), f32_mut(dst->src[6]));
}

void relu_sq_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const int n = static_cast<int>(ggml_nelements(dst));
    int i0, i1;
    split(n, ith, nth, CHANNEL_BLOCK, i0, i1);
    const float * x = f32(dst->src[0]);
    float * y = f32_mut(dst);
    for (int i = i0; i < i1; ++i) {
        const float r = x[i] > 0.0f ? x[i] : 0.0f;
        y[i] = r * r;
    }
}

void gated_residual_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const int n = static_cast<int>(ggml_nelements(dst));
    int i0, i1;
    split(n, ith, nth, CHANNEL_BLOCK, i0, i1);
    const float * x = f32(dst->src[0]);
    const float * r = f32(dst->src[1]);
    const float * v = f32(dst->src[2]);
    float * y = f32_mut(dst);
    for (int i = i0; i < i1; ++i) y[i] = x[i] + sigmoid(r[i]) * v[i];
}

}  // namespace

void wkv4_kernel(int A, int T, int c0, int c1, const float * k, const float * v, const float * r, const float * first,
                 const float * decay, const float * state_in, float * out, float * state_out) {
    float * aa = state_out;
    float * bb = state_out + A;
    float * pp = state_out + 2 * A;
    for (int c = c0; c < c1; ++c) {
        aa[c] = state_in[c];
        bb[c] = state_in[A + c];
        pp[c] = state_in[2 * A + c];
    }
    for (int t = 0; t < T; ++t) {
        const size_t o = static_cast<size_t>(t) * A;
        for (int c = c0; c < c1; ++c) {
            // Output with the bonus u for the current token:
            //   wkv = (aa*exp(pp) + exp(u+k)*v) / (bb*exp(pp) + exp(u+k)),
            // every exponent shifted by p = max(pp, u+k) so nothing overflows.
            const float kk = k[o + c];
            const float vv = v[o + c];
            float ww = first[c] + kk;
            float p = std::max(pp[c], ww);
            float e1 = std::exp(pp[c] - p);
            float e2 = std::exp(ww - p);
            const float wkv = (e1 * aa[c] + e2 * vv) / (e1 * bb[c] + e2);
            out[o + c] = sigmoid(r[o + c]) * wkv;
            // State update: decay the past by exp(w) (w = -exp(time_decay) < 0)
            // and add the current token, again relative to the new max p.
            ww = decay[c] + pp[c];
            p = std::max(ww, kk);
            e1 = std::exp(ww - p);
            e2 = std::exp(kk - p);
            aa[c] = e1 * aa[c] + e2 * vv;
            bb[c] = e1 * bb[c] + e2;
            pp[c] = p;
        }
    }
}

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

ggml_tensor * wkv4_gated(ggml_context * ctx, ggml_tensor * k, ggml_tensor * v, ggml_tensor * r, ggml_tensor * first,
                         ggml_tensor * decay, ggml_tensor * state_in, ggml_tensor * state_out) {
    GGML_ASSERT(ggml_is_contiguous(k) && ggml_is_contiguous(v) && ggml_is_contiguous(r));
    GGML_ASSERT(ggml_are_same_shape(k, v) && ggml_are_same_shape(k, r));
    GGML_ASSERT(k->type == GGML_TYPE_F32 && v->type == GGML_TYPE_F32 && r->type == GGML_TYPE_F32);
    GGML_ASSERT(ggml_nelements(first) == k->ne[0] && ggml_nelements(decay) == k->ne[0]);
    GGML_ASSERT(ggml_is_contiguous(state_in) && ggml_nelements(state_in) == 3 * k->ne[0]);
    GGML_ASSERT(ggml_is_contiguous(state_out) && ggml_nelements(state_out) == 3 * k->ne[0]);
    ggml_tensor * args[] = {k, v, r, first, decay, state_in, state_out};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, k->ne[0], k->ne[1], 1, 1, args, 7, wkv4_gated_compute,
                          GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * relu_sq(ggml_context * ctx, ggml_tensor * x) {
    GGML_ASSERT(x->type == GGML_TYPE_F32 && ggml_is_contiguous(x));
    ggml_tensor * args[] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, 1, relu_sq_compute,
                          GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * gated_residual(ggml_context * ctx, ggml_tensor * x, ggml_tensor * r, ggml_tensor * v) {
    GGML_ASSERT(ggml_are_same_shape(x, r) && ggml_are_same_shape(x, v));
    GGML_ASSERT(ggml_is_contiguous(x) && ggml_is_contiguous(r) && ggml_is_contiguous(v));
    ggml_tensor * args[] = {x, r, v};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, 3,
                          gated_residual_compute, GGML_N_TASKS_MAX, nullptr);
}

}  // namespace rwkv
