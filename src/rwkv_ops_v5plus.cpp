#include "rwkv_ops_v5plus.h"

#include "rwkv_model.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace rwkv {

namespace {

// The official RWKV-7 decay scale, written as in rwkv/model.py: the decay
// is exp(-0.606531 * sigmoid(.)), 0.606531 ~ exp(-0.5).  Using the exact
// exp(-0.5) instead would move w by ~1e-7 relative.
constexpr float V7_DECAY_SCALE = 0.606531f;
// F.normalize's default eps: x / max(||x||, eps).
constexpr float L2_NORM_EPS = 1e-12f;
constexpr int MAX_MIXES = 8;
constexpr int DOT_LANES = 8;  // partial sums, so that the compiler vectorises the reductions

const float * f32(const ggml_tensor * t) { return static_cast<const float *>(t->data); }

struct Range {
    int64_t begin;
    int64_t end;
};

// Thread ith's share [begin, end) of n items, in contiguous blocks.
Range split(int64_t n, int ith, int nth) {
    const int64_t per = (n + nth - 1) / nth;
    const int64_t begin = std::min(n, ith * per);
    return {begin, std::min(n, begin + per)};
}

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

float dot(const float * a, const float * b, int64_t n) {
    float acc[DOT_LANES] = {0};
    int64_t i = 0;
    for (; i + DOT_LANES <= n; i += DOT_LANES) {
        for (int l = 0; l < DOT_LANES; ++l) {
            acc[l] += a[i + l] * b[i + l];
        }
    }
    float sum = 0.0f;
    for (int l = 0; l < DOT_LANES; ++l) {
        sum += acc[l];
    }
    for (; i < n; ++i) {
        sum += a[i] * b[i];
    }
    return sum;
}

void check_f32(const ggml_tensor * t, int64_t numel) {
    GGML_ASSERT(t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && ggml_nelements(t) == numel);
}

// ---------------------------------------------------------------------------
// Token shift and mixing
// ---------------------------------------------------------------------------

template <MixForm F>
float mix(float xx, float sx, float mu);

// xx * k_mix + sx * (1 - k_mix)
template <>
float mix<MixForm::V4>(float xx, float sx, float mu) {
    return xx * mu + sx * (1.0f - mu);
}

// xx + (sx - xx) * maa
template <>
float mix<MixForm::V6>(float xx, float sx, float mu) {
    return xx + (sx - xx) * mu;
}

template <MixForm F>
void shift_mix_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * xx = dst->src[0];
    const int64_t D = xx->ne[0], T = xx->ne[1], n = dst->ne[2];
    const float * x = f32(xx);
    const Range c = split(D, ith, nth);
    for (int64_t i = 0; i < n; ++i) {
        const float * mu = f32(dst->src[2 + i]);
        float * out = static_cast<float *>(dst->data) + i * D * T;
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

// out[i] = xx + (sx - xx) * (maa[i] + m[i])
void shift_mix_lora_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * xx = dst->src[0];
    const int64_t D = xx->ne[0], T = xx->ne[1], n = dst->ne[2];
    const float * x = f32(xx);
    const float * m = f32(dst->src[2]);
    const Range c = split(D, ith, nth);
    for (int64_t i = 0; i < n; ++i) {
        const float * maa = f32(dst->src[3 + i]);
        for (int64_t t = 0; t < T; ++t) {
            const float * cur = x + t * D;
            const float * prev = t == 0 ? f32(dst->src[1]) : cur - D;
            const float * mi = m + (i * T + t) * D;
            float * o = static_cast<float *>(dst->data) + (i * T + t) * D;
            for (int64_t ch = c.begin; ch < c.end; ++ch) {
                o[ch] = cur[ch] + (prev[ch] - cur[ch]) * (maa[ch] + mi[ch]);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// GroupNorm of one head (ln_x)
// ---------------------------------------------------------------------------

// F.group_norm over one head's N values (biased variance, in double), then
// the affine ln_x weight and bias of those channels.
void group_norm_head(int64_t N, const float * y, const float * w, const float * b, float eps, float * out) {
    double mean = 0.0;
    for (int64_t j = 0; j < N; ++j) {
        mean += y[j];
    }
    mean /= static_cast<double>(N);
    double var = 0.0;
    for (int64_t j = 0; j < N; ++j) {
        const double d = y[j] - mean;
        var += d * d;
    }
    var /= static_cast<double>(N);
    const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
    for (int64_t j = 0; j < N; ++j) {
        out[j] = static_cast<float>((y[j] - mean) * inv) * w[j] + b[j];
    }
}

// ---------------------------------------------------------------------------
// RWKV-5/6 WKV
// ---------------------------------------------------------------------------

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
    const float * decay = f32(dst->src[3]) + h * N;
    if (dst->src[8] == nullptr) {
        std::copy(decay, decay + N, w);
        return;
    }
    const float * lora = f32(dst->src[8]) + t * D + h * N;
    for (int64_t i = 0; i < N; ++i) {
        w[i] = std::exp(-std::exp(decay[i] + lora[i]));
    }
}

void wkv5_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const HParams & hp = *static_cast<const HParams *>(userdata);
    const int64_t N = hp.head_size, D = hp.n_embed, T = dst->ne[1] - N;
    const float *r = f32(dst->src[0]), *k = f32(dst->src[1]), *v = f32(dst->src[2]), *u = f32(dst->src[4]);
    const float *lnx_w = f32(dst->src[5]), *lnx_b = f32(dst->src[6]);
    float * out = static_cast<float *>(dst->data);
    std::vector<float> w(N), y(N);
    const Range heads = split(hp.n_head, ith, nth);
    for (int64_t h = heads.begin; h < heads.end; ++h) {
        float * S = out + T * D + h * N * N;
        std::memcpy(S, f32(dst->src[7]) + h * N * N, N * N * sizeof(float));
        for (int64_t t = 0; t < T; ++t) {
            const int64_t c0 = t * D + h * N;
            wkv5_decay(dst, D, N, h, t, w.data());
            wkv5_step(N, r + c0, k + c0, v + c0, w.data(), u + h * N, S, y.data());
            group_norm_head(N, y.data(), lnx_w + h * N, lnx_b + h * N, hp.ln_x_eps, out + c0);
        }
    }
}

// ---------------------------------------------------------------------------
// RWKV-7
// ---------------------------------------------------------------------------

// One head of one token of RWKV_x070_TMix_one before the WKV (see header).
void wkv7_prepare_head(const ggml_tensor * dst, int64_t N, int64_t c0, int64_t h, float * const blocks[WKV7_BLOCKS]) {
    const float *k = f32(dst->src[0]) + c0, *v = f32(dst->src[1]) + c0, *al = f32(dst->src[2]) + c0;
    const float *a0 = f32(dst->src[3]) + h * N, *k_k = f32(dst->src[4]) + h * N, *k_a = f32(dst->src[5]) + h * N;
    float *kk = blocks[WKV7_KK] + c0, *kp = blocks[WKV7_K] + c0, *vp = blocks[WKV7_V] + c0, *a = blocks[WKV7_A] + c0;
    // kk = F.normalize((k * k_k).view(H, N), dim=-1, p=2.0)
    double ss = 0.0;
    for (int64_t j = 0; j < N; ++j) {
        kk[j] = k[j] * k_k[j];
        ss += static_cast<double>(kk[j]) * kk[j];
    }
    const float norm = std::max(static_cast<float>(std::sqrt(ss)), L2_NORM_EPS);
    for (int64_t j = 0; j < N; ++j) {
        kk[j] = kk[j] / norm;
        // a = sigmoid(a0 + (xa @ a1) @ a2);  k = k * (1 + (a - 1) * k_a)
        a[j] = sigmoid(a0[j] + al[j]);
        kp[j] = k[j] * (1.0f + (a[j] - 1.0f) * k_a[j]);
    }
    if (dst->src[6] == nullptr) {  // layer 0: v_first = v
        std::copy(v, v + N, vp);
        return;
    }
    // v = v + (v_first - v) * sigmoid(v0 + (xv @ v1) @ v2)
    const float *vl = f32(dst->src[6]) + c0, *v0 = f32(dst->src[7]) + h * N, *vf = f32(dst->src[8]) + c0;
    for (int64_t j = 0; j < N; ++j) {
        vp[j] = v[j] + (vf[j] - v[j]) * sigmoid(v0[j] + vl[j]);
    }
}

void wkv7_prepare_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const HParams & hp = *static_cast<const HParams *>(userdata);
    const int64_t N = hp.head_size, H = hp.n_head, D = hp.n_embed, T = dst->ne[1];
    float * base = static_cast<float *>(dst->data);
    float * const blocks[WKV7_BLOCKS] = {base, base + D * T, base + 2 * D * T, base + 3 * D * T};
    const Range items = split(T * H, ith, nth);  // (token, head) pairs
    for (int64_t p = items.begin; p < items.end; ++p) {
        const int64_t t = p / H, h = p % H;
        wkv7_prepare_head(dst, N, t * D + h * N, h, blocks);
    }
}

// One token of one head, S indexed [value i][key j]:
//   S = S * w + (S @ -kk) (kk * a)^T + v k^T   (state * w + state @ ab + vk)
//   y = S @ r
void wkv7_step(int64_t N, const float * r, const float * w, const float * k, const float * v, const float * neg_kk,
               const float * b, float * S, float * y) {
    for (int64_t i = 0; i < N; ++i) {
        float * row = S + i * N;
        const float sa = dot(row, neg_kk, N);
        const float vi = v[i];
        for (int64_t j = 0; j < N; ++j) {
            row[j] = row[j] * w[j] + sa * b[j] + vi * k[j];
        }
        y[i] = dot(row, r, N);
    }
}

// Per-head inputs of wkv7_step at one token: w, -kk and kk * a.
void wkv7_token_vectors(const ggml_tensor * dst, int64_t N, int64_t c0, int64_t h, float * w, float * neg_kk,
                        float * b) {
    const int64_t DT = ggml_nelements(dst->src[3]) / WKV7_BLOCKS;
    const float *w_lora = f32(dst->src[1]) + c0, *w0 = f32(dst->src[2]) + h * N;
    const float *kk = f32(dst->src[3]) + WKV7_KK * DT + c0, *a = f32(dst->src[3]) + WKV7_A * DT + c0;
    for (int64_t j = 0; j < N; ++j) {
        // w = torch.exp(-0.606531 * torch.sigmoid((w0 + w).float()))
        w[j] = std::exp(-V7_DECAY_SCALE * sigmoid(w0[j] + w_lora[j]));
        neg_kk[j] = -kk[j];
        b[j] = kk[j] * a[j];
    }
}

void wkv7_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const HParams & hp = *static_cast<const HParams *>(userdata);
    const int64_t N = hp.head_size, D = hp.n_embed, T = dst->ne[1] - N, DT = D * T;
    const float *r = f32(dst->src[0]), *prep = f32(dst->src[3]), *r_k = f32(dst->src[4]);
    const float *kp = prep + WKV7_K * DT, *vp = prep + WKV7_V * DT;
    const float *lnx_w = f32(dst->src[5]), *lnx_b = f32(dst->src[6]);
    float * out = static_cast<float *>(dst->data);
    std::vector<float> w(N), neg_kk(N), b(N), y(N);
    const Range heads = split(hp.n_head, ith, nth);
    for (int64_t h = heads.begin; h < heads.end; ++h) {
        float * S = out + DT + h * N * N;
        std::memcpy(S, f32(dst->src[7]) + h * N * N, N * N * sizeof(float));
        for (int64_t t = 0; t < T; ++t) {
            const int64_t c0 = t * D + h * N;
            wkv7_token_vectors(dst, N, c0, h, w.data(), neg_kk.data(), b.data());
            wkv7_step(N, r + c0, w.data(), kp + c0, vp + c0, neg_kk.data(), b.data(), S, y.data());
            group_norm_head(N, y.data(), lnx_w + h * N, lnx_b + h * N, hp.ln_x_eps, out + c0);
            // xx + ((r * k * r_k).view(H, N).sum(dim=-1, keepdim=True) * v.view(H, N))
            float bonus = 0.0f;
            for (int64_t j = 0; j < N; ++j) {
                bonus += r[c0 + j] * kp[c0 + j] * r_k[h * N + j];
            }
            for (int64_t i = 0; i < N; ++i) {
                out[c0 + i] += bonus * vp[c0 + i];
            }
        }
    }
}

void * as_userdata(const HParams & hp) { return const_cast<HParams *>(&hp); }

}  // namespace

ggml_tensor * shift_mix(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * const * mu, int n,
                        MixForm form) {
    GGML_ASSERT(n >= 1 && n <= MAX_MIXES);
    const int64_t D = xx->ne[0], T = xx->ne[1];
    check_f32(xx, D * T);
    check_f32(x_prev, D);
    ggml_tensor * args[2 + MAX_MIXES] = {xx, x_prev};
    for (int i = 0; i < n; ++i) {
        check_f32(mu[i], D);
        args[2 + i] = mu[i];
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T, n, 1, args, 2 + n,
                          form == MixForm::V4 ? shift_mix_compute<MixForm::V4> : shift_mix_compute<MixForm::V6>,
                          GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * shift_mix_lora(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * m,
                             ggml_tensor * const * maa) {
    constexpr int N_MIX = 5;
    const int64_t D = xx->ne[0], T = xx->ne[1];
    check_f32(xx, D * T);
    check_f32(x_prev, D);
    check_f32(m, D * T * N_MIX);
    ggml_tensor * args[3 + N_MIX] = {xx, x_prev, m};
    for (int i = 0; i < N_MIX; ++i) {
        check_f32(maa[i], D);
        args[3 + i] = maa[i];
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T, N_MIX, 1, args, 3 + N_MIX, shift_mix_lora_compute,
                          GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * wkv5(ggml_context * ctx, const HParams & hp, ggml_tensor * r, ggml_tensor * k, ggml_tensor * v,
                   ggml_tensor * decay, ggml_tensor * decay_lora, ggml_tensor * bonus, ggml_tensor * lnx_w,
                   ggml_tensor * lnx_b, ggml_tensor * state) {
    const int64_t D = hp.n_embed, N = hp.head_size, T = r->ne[1];
    for (ggml_tensor * t : {r, k, v}) {
        check_f32(t, D * T);
    }
    for (ggml_tensor * t : {decay, bonus, lnx_w, lnx_b}) {
        check_f32(t, D);
    }
    check_f32(state, D * N);
    ggml_tensor * args[9] = {r, k, v, decay, bonus, lnx_w, lnx_b, state, decay_lora};
    if (decay_lora != nullptr) {
        check_f32(decay_lora, D * T);
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T + N, 1, 1, args, decay_lora != nullptr ? 9 : 8, wkv5_compute,
                          GGML_N_TASKS_MAX, as_userdata(hp));
}

ggml_tensor * wkv7_prepare(ggml_context * ctx, const HParams & hp, ggml_tensor * k, ggml_tensor * v,
                           ggml_tensor * a_lora, ggml_tensor * a0, ggml_tensor * k_k, ggml_tensor * k_a,
                           ggml_tensor * v_lora, ggml_tensor * v0, ggml_tensor * v_first) {
    const int64_t D = hp.n_embed, T = k->ne[1];
    for (ggml_tensor * t : {k, v, a_lora}) {
        check_f32(t, D * T);
    }
    for (ggml_tensor * t : {a0, k_k, k_a}) {
        check_f32(t, D);
    }
    ggml_tensor * args[9] = {k, v, a_lora, a0, k_k, k_a, v_lora, v0, v_first};
    const bool residual = v_lora != nullptr;
    if (residual) {
        check_f32(v_lora, D * T);
        check_f32(v0, D);
        check_f32(v_first, D * T);
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T, WKV7_BLOCKS, 1, args, residual ? 9 : 6, wkv7_prepare_compute,
                          GGML_N_TASKS_MAX, as_userdata(hp));
}

ggml_tensor * wkv7(ggml_context * ctx, const HParams & hp, ggml_tensor * r, ggml_tensor * w_lora, ggml_tensor * w0,
                   ggml_tensor * prep, ggml_tensor * r_k, ggml_tensor * lnx_w, ggml_tensor * lnx_b,
                   ggml_tensor * state) {
    const int64_t D = hp.n_embed, N = hp.head_size, T = r->ne[1];
    check_f32(r, D * T);
    check_f32(w_lora, D * T);
    check_f32(prep, D * T * WKV7_BLOCKS);
    for (ggml_tensor * t : {w0, r_k, lnx_w, lnx_b}) {
        check_f32(t, D);
    }
    check_f32(state, D * N);
    ggml_tensor * args[8] = {r, w_lora, w0, prep, r_k, lnx_w, lnx_b, state};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T + N, 1, 1, args, 8, wkv7_compute, GGML_N_TASKS_MAX,
                          as_userdata(hp));
}

}  // namespace rwkv
