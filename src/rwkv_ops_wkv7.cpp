// RWKV-7 WKV (rwkv_ops.h): wkv7_prepare and wkv7.  The maths is the
// official one (rwkv/model.py: RWKV_x070_TMix_one / _seq).
#include "rwkv_ops.h"
#include "rwkv_ops_util.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
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
using ops::sigmoid;
using ops::thread_range;

namespace {

// The official RWKV-7 decay scale, written as in rwkv/model.py: the decay
// is exp(-0.606531 * sigmoid(.)), 0.606531 ~ exp(-0.5).  Using the exact
// exp(-0.5) instead would move w by ~1e-7 relative.
constexpr float V7_DECAY_SCALE = 0.606531f;
// F.normalize's default eps: x / max(||x||, eps).
constexpr float L2_NORM_EPS = 1e-12f;
constexpr int DOT_LANES = 8;  // partial sums, so that the compiler vectorises the reductions

// The instruction sets wkv7_step is compiled for, chosen at load by the CPU
// (GCC's function multi-versioning): the library is built for generic
// x86-64, where its row loops would run 4 floats at a time.  dot is inlined
// into each clone (forced), to run at that clone's vector width.  Measured:
// the recurrence's share of a 169M FP16 prefill -33% on AVX-512.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#    define RWKV_WKV7_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#    define RWKV_INLINE_IN_CLONES __attribute__((always_inline)) inline
#else
#    define RWKV_WKV7_CLONES
#    define RWKV_INLINE_IN_CLONES inline
#endif

RWKV_INLINE_IN_CLONES float dot(const float * a, const float * b, int64_t n) {
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

// ---------------------------------------------------------------------------
// wkv7_prepare
// ---------------------------------------------------------------------------

// Sources of the wkv7_prepare node (the last three only after layer 0).
enum PrepSrc { P_K, P_V, P_A_LORA, P_A0, P_K_K, P_K_A, P_V_LORA, P_V0, P_V_FIRST, P_N_SRC };

// wkv7_prepare has no state to derive the head size from: it travels in
// the userdata pointer itself, so nothing has to outlive the graph.
void * head_size_as_userdata(int64_t head_size) { return reinterpret_cast<void *>(static_cast<intptr_t>(head_size)); }
int64_t head_size_of_userdata(void * userdata) { return static_cast<int64_t>(reinterpret_cast<intptr_t>(userdata)); }

// One head of one token of RWKV_x070_TMix_one before the WKV (see header).
void wkv7_prepare_head(const ggml_tensor * dst, int64_t N, int64_t c0, int64_t h, float * const blocks[WKV7_BLOCKS]) {
    const float *k = f32(dst->src[P_K]) + c0, *v = f32(dst->src[P_V]) + c0, *al = f32(dst->src[P_A_LORA]) + c0;
    const float *a0 = f32(dst->src[P_A0]) + h * N, *k_k = f32(dst->src[P_K_K]) + h * N;
    const float * k_a = f32(dst->src[P_K_A]) + h * N;
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
    if (dst->src[P_V_LORA] == nullptr) {  // layer 0: v_first = v
        std::copy(v, v + N, vp);
        return;
    }
    // v = v + (v_first - v) * sigmoid(v0 + (xv @ v1) @ v2)
    const float *vl = f32(dst->src[P_V_LORA]) + c0, *v0 = f32(dst->src[P_V0]) + h * N;
    const float * vf = f32(dst->src[P_V_FIRST]) + c0;
    for (int64_t j = 0; j < N; ++j) {
        vp[j] = v[j] + (vf[j] - v[j]) * sigmoid(v0[j] + vl[j]);
    }
}

// dst [D, T, 4]; (token, head) pairs are split between threads.
void wkv7_prepare_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const int64_t N = head_size_of_userdata(userdata), D = dst->ne[0], H = D / N, T = dst->ne[1];
    float * base = f32_mut(dst);
    float * const blocks[WKV7_BLOCKS] = {base, base + D * T, base + 2 * D * T, base + 3 * D * T};
    const Range items = thread_range(T * H, ith, nth);
    for (int64_t p = items.begin; p < items.end; ++p) {
        const int64_t t = p / H, h = p % H;
        wkv7_prepare_head(dst, N, t * D + h * N, h, blocks);
    }
}

// ---------------------------------------------------------------------------
// wkv7
// ---------------------------------------------------------------------------

// Sources of the wkv7 node.
enum Wkv7Src { R, W_LORA, W0, PREP, R_K, LNX_W, LNX_B, STATE, SEQS, N_SRC };

// One token of one head, S indexed [value i][key j]:
//   S = S * w + (S @ -kk) (kk * a)^T + v k^T   (state * w + state @ ab + vk)
//   y = S @ r
RWKV_WKV7_CLONES void wkv7_step(int64_t N, const float * r, const float * w, const float * k, const float * v,
                                const float * neg_kk, const float * b, float * S, float * y) {
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
    const int64_t DT = ggml_nelements(dst->src[PREP]) / WKV7_BLOCKS;
    const float *w_lora = f32(dst->src[W_LORA]) + c0, *w0 = f32(dst->src[W0]) + h * N;
    const float *kk = f32(dst->src[PREP]) + WKV7_KK * DT + c0, *a = f32(dst->src[PREP]) + WKV7_A * DT + c0;
    for (int64_t j = 0; j < N; ++j) {
        // w = torch.exp(-0.606531 * torch.sigmoid((w0 + w).float()))
        w[j] = exp_f32(-V7_DECAY_SCALE * sigmoid(w0[j] + w_lora[j]));
        neg_kk[j] = -kk[j];
        b[j] = kk[j] * a[j];
    }
}

// dst [D, T + N * n_seqs]; (sequence, head) pairs are split between
// threads, the new state of sequence s follows the T output columns as N
// columns.  Padding columns are zero.  userdata: the ln_x eps.
void wkv7_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const float eps = *static_cast<const float *>(userdata);
    const int64_t D = dst->ne[0], T = dst->src[R]->ne[1], DT = D * T;
    const Seqs seqs(dst->src[SEQS], T);
    const int64_t N = (dst->ne[1] - T) / seqs.n(), H = D / N;
    const float *r = f32(dst->src[R]), *prep = f32(dst->src[PREP]), *r_k = f32(dst->src[R_K]);
    const float *kp = prep + WKV7_K * DT, *vp = prep + WKV7_V * DT;
    const float *lnx_w = f32(dst->src[LNX_W]), *lnx_b = f32(dst->src[LNX_B]);
    float * out = f32_mut(dst);
    std::vector<float> w(N), neg_kk(N), b(N), y(N);
    const Range items = thread_range(seqs.n() * H, ith, nth);
    for (int64_t p = items.begin; p < items.end; ++p) {
        const int64_t s = p / H, h = p % H;
        float * S = out + DT + s * N * D + h * N * N;
        std::memcpy(S, row_f32(dst->src[STATE], s) + h * N * N, N * N * sizeof(float));
        for (int64_t t = seqs.begin(s); t < seqs.end(s); ++t) {
            const int64_t c0 = t * D + h * N;
            wkv7_token_vectors(dst, N, c0, h, w.data(), neg_kk.data(), b.data());
            wkv7_step(N, r + c0, w.data(), kp + c0, vp + c0, neg_kk.data(), b.data(), S, y.data());
            group_norm_head(N, y.data(), lnx_w + h * N, lnx_b + h * N, eps, out + c0);
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
    const Range pad = thread_range(D, ith, nth, ops::CHANNEL_BLOCK);
    for (int64_t t = seqs.used(); t < T; ++t) {
        std::fill(out + t * D + pad.begin, out + t * D + pad.end, 0.0f);
    }
}

}  // namespace

ggml_tensor * wkv7_prepare(ggml_context * ctx, int64_t n_head, int64_t head_size, ggml_tensor * k, ggml_tensor * v,
                           ggml_tensor * a_lora, ggml_tensor * a0, ggml_tensor * k_k, ggml_tensor * k_a,
                           ggml_tensor * v_lora, ggml_tensor * v0, ggml_tensor * v_first) {
    const int64_t D = k->ne[0], T = k->ne[1];
    GGML_ASSERT(n_head >= 1 && head_size >= 1 && n_head * head_size == D);
    for (ggml_tensor * t : {k, v, a_lora}) {
        check_f32(t, D * T);
    }
    for (ggml_tensor * t : {a0, k_k, k_a}) {
        check_f32(t, D);
    }
    ggml_tensor * args[P_N_SRC] = {k, v, a_lora, a0, k_k, k_a, v_lora, v0, v_first};
    const bool residual = v_lora != nullptr;
    if (residual) {
        check_f32(v_lora, D * T);
        check_f32(v0, D);
        check_f32(v_first, D * T);
    }
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T, WKV7_BLOCKS, 1, args, residual ? P_N_SRC : P_V_LORA,
                          wkv7_prepare_compute, GGML_N_TASKS_MAX, head_size_as_userdata(head_size));
}

ggml_tensor * wkv7(ggml_context * ctx, int64_t n_head, int64_t head_size, const float * ln_x_eps, ggml_tensor * r,
                   ggml_tensor * w_lora, ggml_tensor * w0, ggml_tensor * prep, ggml_tensor * r_k,
                   ggml_tensor * lnx_w, ggml_tensor * lnx_b, ggml_tensor * state, ggml_tensor * seqs) {
    const int64_t D = r->ne[0], N = head_size, T = r->ne[1], S = seqs == nullptr ? 1 : ggml_nelements(seqs) - 1;
    GGML_ASSERT(n_head >= 1 && head_size >= 1 && n_head * head_size == D);
    check_f32(r, D * T);
    check_f32(w_lora, D * T);
    check_f32(prep, D * T * WKV7_BLOCKS);
    for (ggml_tensor * t : {w0, r_k, lnx_w, lnx_b}) {
        check_f32(t, D);
    }
    check_seqs(seqs, S);
    check_rows_f32(state, D * N, S);
    ggml_tensor * args[N_SRC] = {r, w_lora, w0, prep, r_k, lnx_w, lnx_b, state, seqs};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, D, T + N * S, 1, 1, args, N_SRC, wkv7_compute, GGML_N_TASKS_MAX,
                          const_cast<float *>(ln_x_eps));
}

}  // namespace rwkv
