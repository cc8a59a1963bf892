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
using ops::exp_poly;
using ops::f32;
using ops::f32_mut;
using ops::group_norm_head;
using ops::lane_sum;
using ops::Range;
using ops::check_rows_f32;
using ops::check_seqs;
using ops::row_f32;
using ops::Seqs;
using ops::sigmoid_poly;
using ops::thread_range;

namespace {

// The official RWKV-7 decay scale, written as in rwkv/model.py: the decay
// is exp(-0.606531 * sigmoid(.)), 0.606531 ~ exp(-0.5).  Using the exact
// exp(-0.5) instead would move w by ~1e-7 relative.
constexpr float V7_DECAY_SCALE = 0.606531f;
// F.normalize's default eps: x / max(||x||, eps).
constexpr float L2_NORM_EPS = 1e-12f;

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
// The blocks written never overlap the sources read: restrict lets each
// loop vectorise.
RWKV_OPS_CLONES void wkv7_prepare_head(const ggml_tensor * dst, int64_t N, int64_t c0, int64_t h,
                                       float * const blocks[WKV7_BLOCKS]) {
    const float *__restrict k = f32(dst->src[P_K]) + c0, *__restrict v = f32(dst->src[P_V]) + c0;
    const float *__restrict al = f32(dst->src[P_A_LORA]) + c0, *__restrict a0 = f32(dst->src[P_A0]) + h * N;
    const float *__restrict k_k = f32(dst->src[P_K_K]) + h * N, *__restrict k_a = f32(dst->src[P_K_A]) + h * N;
    float *__restrict kk = blocks[WKV7_KK] + c0, *__restrict kp = blocks[WKV7_K] + c0;
    float *__restrict vp = blocks[WKV7_V] + c0, *__restrict a = blocks[WKV7_A] + c0;
    // kk = F.normalize((k * k_k).view(H, N), dim=-1, p=2.0)
    for (int64_t j = 0; j < N; ++j) {
        kk[j] = k[j] * k_k[j];
    }
    const double ss = lane_sum(N, [kk](int64_t j) { return static_cast<double>(kk[j]) * kk[j]; });
    const float norm = std::max(static_cast<float>(std::sqrt(ss)), L2_NORM_EPS);
    for (int64_t j = 0; j < N; ++j) {
        kk[j] = kk[j] / norm;
    }
    // a = sigmoid(a0 + (xa @ a1) @ a2);  k = k * (1 + (a - 1) * k_a)
    for (int64_t j = 0; j < N; ++j) {
        a[j] = sigmoid_poly(a0[j] + al[j]);
    }
    for (int64_t j = 0; j < N; ++j) {
        kp[j] = k[j] * (1.0f + (a[j] - 1.0f) * k_a[j]);
    }
    if (dst->src[P_V_LORA] == nullptr) {  // layer 0: v_first = v
        std::copy(v, v + N, vp);
        return;
    }
    // v = v + (v_first - v) * sigmoid(v0 + (xv @ v1) @ v2)
    const float *__restrict vl = f32(dst->src[P_V_LORA]) + c0, *__restrict v0 = f32(dst->src[P_V0]) + h * N;
    const float *__restrict vf = f32(dst->src[P_V_FIRST]) + c0;
    for (int64_t j = 0; j < N; ++j) {
        vp[j] = v[j] + (vf[j] - v[j]) * sigmoid_poly(v0[j] + vl[j]);
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

// The inputs and output of a wkv7 node, as arrays ([D, T] ones indexed by
// the column c0 = t * D + h * N of head h at token t).
struct Wkv7Arrays {
    int64_t N;
    const float *r, *w_lora, *w0, *kk, *kp, *vp, *a, *r_k, *lnx_w, *lnx_b;
    float eps;
    float * out;
};

// Per-head inputs of a step at column c0: w, -kk and kk * a.
RWKV_INLINE_IN_CLONES void token_vectors(const Wkv7Arrays & in, int64_t c0, int64_t h, float * w, float * neg_kk,
                                         float * b) {
    const int64_t N = in.N;
    const float *w_lora = in.w_lora + c0, *w0 = in.w0 + h * N, *kk = in.kk + c0, *a = in.a + c0;
    for (int64_t j = 0; j < N; ++j) {
        // w = torch.exp(-0.606531 * torch.sigmoid((w0 + w).float()))
        w[j] = exp_poly(-V7_DECAY_SCALE * sigmoid_poly(w0[j] + w_lora[j]));
    }
    for (int64_t j = 0; j < N; ++j) {
        neg_kk[j] = -kk[j];
        b[j] = kk[j] * a[j];
    }
}

// One token of one head on ST = S^T, the state indexed [key j][value i]
// (S itself, [value i][key j], is the official layout):
//   S = S * w + (S @ -kk) (kk * a)^T + v k^T   (state * w + state @ ab + vk)
//   y = S @ r
// Transposed, each sum over j is a vector update across i, with no
// horizontal reductions (two per row in S's layout).  W: the head size when
// known at compile time (64 in every RWKV-7 model: sa, v and y then stay in
// vector registers), 0 for n at run time; the same arithmetic either way.
// sa: n floats of scratch (W = 0).
template <int64_t W>
RWKV_INLINE_IN_CLONES void step_keys(int64_t n, const float * r, const float * w, const float * k, const float * v,
                                     const float * neg_kk, const float * b, float * ST, float * sa_scratch,
                                     float * y) {
    const int64_t N = W > 0 ? W : n;
    float local[3 * (W > 0 ? W : 1)];
    float *sa = W > 0 ? local : sa_scratch, *acc = W > 0 ? local + W : y;
    const float * vv = v;
    if (W > 0) {
        std::copy(v, v + W, local + 2 * W);
        vv = local + 2 * W;
    }
    std::fill(sa, sa + N, 0.0f);
    for (int64_t j = 0; j < N; ++j) {
        const float * row = ST + j * N;
        const float c = neg_kk[j];
        for (int64_t i = 0; i < N; ++i) {
            sa[i] += row[i] * c;
        }
    }
    std::fill(acc, acc + N, 0.0f);
    for (int64_t j = 0; j < N; ++j) {
        float * row = ST + j * N;
        const float wj = w[j], bj = b[j], kj = k[j], rj = r[j];
        for (int64_t i = 0; i < N; ++i) {
            row[i] = row[i] * wj + sa[i] * bj + vv[i] * kj;
            acc[i] += rj * row[i];
        }
    }
    if (W > 0) {
        std::copy(acc, acc + W, y);
    }
}

// dst = src^T, both N x N: the state's transposition at both ends of a
// run of tokens.  Element by element it costs about as much as a decode
// step (2.3 us for 64 x 64), so where GCC's function multi-versioning is
// there, AVX2 and AVX-512 versions transpose in 8 x 8 or 16 x 16 blocks of
// vector shuffles (0.45 us with AVX-512).
void transpose_scalar(int64_t N, const float * src, float * dst) {
    for (int64_t i = 0; i < N; ++i) {
        for (int64_t j = 0; j < N; ++j) {
            dst[j * N + i] = src[i * N + j];
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// After the shuffle stages of a block, vector k holds column
// (k with its two lowest bits swapped) of the block.
constexpr int shuffled_column(int k) { return (k & ~3) | ((k & 1) << 1) | ((k >> 1) & 1); }

__attribute__((target("default"))) void transpose(int64_t N, const float * src, float * dst) {
    transpose_scalar(N, src, dst);
}

__attribute__((target("arch=x86-64-v3"))) void transpose(int64_t N, const float * src, float * dst) {
    typedef float v8 __attribute__((vector_size(32)));
    typedef int32_t m8 __attribute__((vector_size(32)));
    if (N % 8 != 0) {
        transpose_scalar(N, src, dst);
        return;
    }
    for (int64_t bi = 0; bi < N; bi += 8) {
        for (int64_t bj = 0; bj < N; bj += 8) {
            v8 r[8], t[8];
            for (int k = 0; k < 8; ++k) std::memcpy(&r[k], src + (bi + k) * N + bj, sizeof r[k]);
            for (int k = 0; k < 8; k += 2) {  // 32-bit interleave of rows k, k + 1
                t[k] = __builtin_shuffle(r[k], r[k + 1], m8{0, 8, 1, 9, 4, 12, 5, 13});
                t[k + 1] = __builtin_shuffle(r[k], r[k + 1], m8{2, 10, 3, 11, 6, 14, 7, 15});
            }
            for (int g = 0; g < 8; g += 4) {  // 64-bit: rows g + k, g + k + 2
                for (int k = g; k < g + 2; ++k) {
                    r[k] = __builtin_shuffle(t[k], t[k + 2], m8{0, 1, 8, 9, 4, 5, 12, 13});
                    r[k + 2] = __builtin_shuffle(t[k], t[k + 2], m8{2, 3, 10, 11, 6, 7, 14, 15});
                }
            }
            for (int k = 0; k < 4; ++k) {  // 128-bit halves: k, k + 4
                t[k] = __builtin_shuffle(r[k], r[k + 4], m8{0, 1, 2, 3, 8, 9, 10, 11});
                t[k + 4] = __builtin_shuffle(r[k], r[k + 4], m8{4, 5, 6, 7, 12, 13, 14, 15});
            }
            for (int k = 0; k < 8; ++k) std::memcpy(dst + (bj + shuffled_column(k)) * N + bi, &t[k], sizeof t[k]);
        }
    }
}

__attribute__((target("arch=x86-64-v4"))) void transpose(int64_t N, const float * src, float * dst) {
    typedef float v16 __attribute__((vector_size(64)));
    typedef int32_t m16 __attribute__((vector_size(64)));
    if (N % 16 != 0) {
        transpose_scalar(N, src, dst);
        return;
    }
    for (int64_t bi = 0; bi < N; bi += 16) {
        for (int64_t bj = 0; bj < N; bj += 16) {
            v16 r[16], t[16];
            for (int k = 0; k < 16; ++k) std::memcpy(&r[k], src + (bi + k) * N + bj, sizeof r[k]);
            for (int k = 0; k < 16; k += 2) {  // 32-bit interleave of rows k, k + 1
                t[k] = __builtin_shuffle(r[k], r[k + 1], m16{0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29});
                t[k + 1] =
                    __builtin_shuffle(r[k], r[k + 1], m16{2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31});
            }
            for (int g = 0; g < 16; g += 4) {  // 64-bit: rows g + k, g + k + 2
                for (int k = g; k < g + 2; ++k) {
                    r[k] = __builtin_shuffle(t[k], t[k + 2],
                                             m16{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29});
                    r[k + 2] = __builtin_shuffle(t[k], t[k + 2],
                                                 m16{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31});
                }
            }
            for (int g = 0; g < 16; g += 8) {  // 128-bit: rows g + k, g + k + 4
                for (int k = g; k < g + 4; ++k) {
                    t[k] = __builtin_shuffle(r[k], r[k + 4],
                                             m16{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27});
                    t[k + 4] = __builtin_shuffle(r[k], r[k + 4],
                                                 m16{4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31});
                }
            }
            for (int k = 0; k < 8; ++k) {  // 256-bit halves: k, k + 8
                r[k] = __builtin_shuffle(t[k], t[k + 8], m16{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23});
                r[k + 8] =
                    __builtin_shuffle(t[k], t[k + 8], m16{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31});
            }
            for (int k = 0; k < 16; ++k) std::memcpy(dst + (bj + shuffled_column(k)) * N + bi, &r[k], sizeof r[k]);
        }
    }
}
#else
void transpose(int64_t N, const float * src, float * dst) { transpose_scalar(N, src, dst); }
#endif

// Head h's output at column c0 from y:
//   GroupNorm(y) * lnx_w + lnx_b + (r * k * r_k).sum() * v
RWKV_INLINE_IN_CLONES void head_output(const Wkv7Arrays & in, int64_t c0, int64_t h, const float * y) {
    const int64_t N = in.N;
    float * out = in.out + c0;
    group_norm_head(N, y, in.lnx_w + h * N, in.lnx_b + h * N, in.eps, out);
    const float *r = in.r + c0, *kp = in.kp + c0, *vp = in.vp + c0, *r_k = in.r_k + h * N;
    float bonus = 0.0f;
    for (int64_t j = 0; j < N; ++j) {
        bonus += r[j] * kp[j] * r_k[j];
    }
    for (int64_t i = 0; i < N; ++i) {
        out[i] += bonus * vp[i];
    }
}

// Head h of the tokens [t0, t1) of one sequence: its state (S_in, row
// layout) is copied into scratch (one streaming read; transposing straight
// from S_in stalled on its cache misses), transposed, stepped token by
// token, and transposed into S_out.  The same arithmetic for a token whether
// it comes alone or in a run, so that decode, prefill and every batch split
// give the same bits.  scratch: 2 * N * N + 5 * N floats.
RWKV_OPS_CLONES void wkv7_head(const Wkv7Arrays & in, int64_t D, int64_t h, int64_t t0, int64_t t1,
                               const float * S_in, float * S_out, float * scratch) {
    const int64_t N = in.N;
    float *w = scratch, *neg_kk = w + N, *b = neg_kk + N, *y = b + N, *sa = y + N, *ST = sa + N, *S = ST + N * N;
    std::memcpy(S, S_in, N * N * sizeof(float));
    transpose(N, S, ST);
    for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = t * D + h * N;
        token_vectors(in, c0, h, w, neg_kk, b);
        if (N == 64) {
            step_keys<64>(N, in.r + c0, w, in.kp + c0, in.vp + c0, neg_kk, b, ST, sa, y);
        } else {
            step_keys<0>(N, in.r + c0, w, in.kp + c0, in.vp + c0, neg_kk, b, ST, sa, y);
        }
        head_output(in, c0, h, y);
    }
    transpose(N, ST, S_out);
}

// dst [D, T + N * n_seqs]; (sequence, head) pairs are split between
// threads, the new state of sequence s follows the T output columns as N
// columns.  Padding columns are zero.  userdata: the ln_x eps.
void wkv7_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const int64_t D = dst->ne[0], T = dst->src[R]->ne[1], DT = D * T;
    const Seqs seqs(dst->src[SEQS], T);
    const int64_t N = (dst->ne[1] - T) / seqs.n(), H = D / N;
    const float * prep = f32(dst->src[PREP]);
    const Wkv7Arrays in{N,
                        f32(dst->src[R]),
                        f32(dst->src[W_LORA]),
                        f32(dst->src[W0]),
                        prep + WKV7_KK * DT,
                        prep + WKV7_K * DT,
                        prep + WKV7_V * DT,
                        prep + WKV7_A * DT,
                        f32(dst->src[R_K]),
                        f32(dst->src[LNX_W]),
                        f32(dst->src[LNX_B]),
                        *static_cast<const float *>(userdata),
                        f32_mut(dst)};
    std::vector<float> scratch(2 * N * N + 5 * N);
    const Range items = thread_range(seqs.n() * H, ith, nth);
    for (int64_t p = items.begin; p < items.end; ++p) {
        const int64_t s = p / H, h = p % H;
        wkv7_head(in, D, h, seqs.begin(s), seqs.end(s), row_f32(dst->src[STATE], s) + h * N * N,
                  in.out + DT + s * N * D + h * N * N, scratch.data());
    }
    const Range pad = thread_range(D, ith, nth, ops::CHANNEL_BLOCK);
    for (int64_t t = seqs.used(); t < T; ++t) {
        std::fill(in.out + t * D + pad.begin, in.out + t * D + pad.end, 0.0f);
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
