// Small helpers shared by the CPU kernels of the custom ggml operations
// (rwkv_ops_*.cpp, rwkv_packed.cpp): tensor data accessors, the logistic
// function, the split of a kernel's work between ggml's threads, and the
// per-head GroupNorm (ln_x) of the WKV-5/6/7 ops.
#pragma once

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace rwkv {
namespace ops {

// The instruction sets a vectorisable kernel (the WKV-7 recurrence, the
// loops over exp_poly) is compiled for, chosen at load by the CPU (GCC's
// function multi-versioning): the library is built for generic x86-64, where
// its loops would run 4 floats at a time.  Helpers are inlined into each
// clone (forced), to run at that clone's vector width.  Measured: the
// recurrence's share of a 169M FP16 prefill -33% on AVX-512.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#    define RWKV_OPS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#    define RWKV_INLINE_IN_CLONES __attribute__((always_inline)) inline
#else
#    define RWKV_OPS_CLONES
#    define RWKV_INLINE_IN_CLONES inline
#endif

inline const float * f32(const ggml_tensor * t) { return static_cast<const float *>(t->data); }
inline float * f32_mut(const ggml_tensor * t) { return static_cast<float *>(t->data); }

// std::exp(x), bit for bit, without the C library's slow path for results
// that overflow or underflow (it sets errno there, through a call that cost
// 3-4% of a batched RWKV-4 step): every float above 89 overflows to
// infinity and every one below -104 rounds to +0 (e^-104 is below half the
// smallest subnormal), so those are answered here.
inline float exp_f32(float x) {
    if (x > 89.0f) return HUGE_VALF;
    if (x < -104.0f) return 0.0f;
    return std::exp(x);
}

// x > 0 ? x : 0 (NaN and -0 give +0), on the bits: GCC keeps a float select
// as a branch (it may trap), which mispredicts on every other sign change
// (relu_sq was 6% of a batched RWKV-4 step); integer masks vectorise.
inline float positive_part(float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    const uint32_t keep = static_cast<int32_t>(u) > 0 && u <= 0x7f800000u;  // > +0, not NaN
    u &= 0u - keep;
    float p;
    std::memcpy(&p, &u, sizeof p);
    return p;
}

// torch.sigmoid(x)
inline float sigmoid(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

// e^x within 1 ulp of the correctly rounded result (every float of
// [-104.5, 89.5] measured, compiled for x86-64, -v3 and -v4; the tests
// sample them: tests/test_ops.py), in branch-free arithmetic that a loop
// vectorises (std::exp stays a call per element): x = n ln2 + r with
// |r| <= ln2 / 2, e^r by its Taylor polynomial of degree 7 (truncation below
// 6e-9 relative), 2^n applied in two halves so that results in the
// subnormal range round once.  Like exp_f32, x > 89 gives infinity,
// x < -104 gives +0, NaN gives NaN.
RWKV_INLINE_IN_CLONES float exp_poly(float x) {
    // Clamp to [-104, 89] on the bits, NaNs kept (a float select would stay
    // a branch: the compare may trap, so it would not vectorise).
    constexpr uint32_t HI = 0x42b20000u, LO = 0xc2d00000u;  // the bits of 89 and -104
    constexpr uint32_t POS_INF = 0x7f800000u, NEG_INF = 0xff800000u;
    uint32_t xu;
    std::memcpy(&xu, &x, sizeof xu);
    xu = xu - (HI + 1) < POS_INF - HI ? HI : xu;  // x in (89, +inf]
    xu = xu - (LO + 1) < NEG_INF - LO ? LO : xu;  // x in [-inf, -104)
    std::memcpy(&x, &xu, sizeof x);
    // n = round(x / ln2) by the 1.5 * 2^23 shifter (exact for |n| < 2^22).
    constexpr float SHIFTER = 12582912.0f;
    const float t = x * 1.44269504088896341f + SHIFTER;
    const float n = t - SHIFTER;
    const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln2 split hi + lo
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    // n's bits sit in t's low mantissa bits; unsigned arithmetic keeps a
    // NaN's garbage defined (the NaN itself comes through p).
    uint32_t tu, su;
    std::memcpy(&tu, &t, sizeof tu);
    std::memcpy(&su, &SHIFTER, sizeof su);
    const int32_t ni = static_cast<int32_t>(tu - su);  // n, in [-150, 128]
    const int32_t half = ni >> 1;                      // 2^n = 2^half * 2^(n - half), both normal
    const uint32_t b1 = (static_cast<uint32_t>(half) + 127u) << 23;
    const uint32_t b2 = (static_cast<uint32_t>(ni - half) + 127u) << 23;
    float s1, s2;
    std::memcpy(&s1, &b1, sizeof s1);
    std::memcpy(&s2, &b2, sizeof s2);
    return p * s1 * s2;
}

// sigmoid through exp_poly (vectorisable).
RWKV_INLINE_IN_CLONES float sigmoid_poly(float x) { return 1.0f / (1.0f + exp_poly(-x)); }

// Build-time check of an op's input: contiguous f32 with numel elements.
inline void check_f32(const ggml_tensor * t, int64_t numel) {
    GGML_ASSERT(t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && ggml_nelements(t) == numel);
}

// Floats per block of a channel-wise thread split: one cache line, so two
// threads never write the same line.
constexpr int CHANNEL_BLOCK = 16;

struct Range {
    int64_t begin;
    int64_t end;
};

// Thread ith's share [begin, end) of n items, split between nth threads in
// whole blocks of `block` items (the last block may be partial).  Blocks of
// 16 floats keep two threads off one cache line.  Every kernel computes an
// item the same way whichever thread takes it, so the split never changes a
// result.
inline Range thread_range(int64_t n, int ith, int nth, int64_t block = 1) {
    const int64_t n_blocks = (n + block - 1) / block;
    return {std::min(n, n_blocks * ith / nth * block), std::min(n, n_blocks * (ith + 1) / nth * block)};
}

// The sequences of a batch (rwkv_ops.h, "Batches of sequences"): sequence s
// is the columns [begin(s), end(s)) of a [D, T] activation; the columns from
// end(n - 1) to T are padding, in no sequence.  Without a layout tensor the
// whole of T is one sequence.
class Seqs {
public:
    Seqs(const ggml_tensor * seqs, int64_t T)
        : off_(seqs != nullptr ? static_cast<const int32_t *>(seqs->data) : single_),
          n_(seqs != nullptr ? ggml_nelements(seqs) - 1 : 1), single_{0, static_cast<int32_t>(T)} {}
    Seqs(const Seqs &) = delete;
    Seqs & operator=(const Seqs &) = delete;

    int64_t n() const { return n_; }
    int64_t begin(int64_t s) const { return off_[s]; }
    int64_t end(int64_t s) const { return off_[s + 1]; }
    // The first padding column.
    int64_t used() const { return off_[n_]; }

private:
    const int32_t * off_;
    int64_t n_;
    int32_t single_[2];
};

// Build-time check of a layout tensor for n_seqs sequences over T columns
// (nullptr: one sequence, n_seqs must be 1).  The offsets themselves are
// the caller's to keep in [0, T], non-decreasing.
inline void check_seqs(const ggml_tensor * seqs, int64_t n_seqs) {
    GGML_ASSERT(seqs == nullptr ? n_seqs == 1
                                : seqs->type == GGML_TYPE_I32 && ggml_is_contiguous(seqs) &&
                                      ggml_nelements(seqs) == n_seqs + 1);
}

// Build-time check of a per-sequence state input: n_seqs rows of n floats,
// row s at t->nb[1] * s (a strided view into a state buffer), or one
// contiguous row.
inline void check_rows_f32(const ggml_tensor * t, int64_t n, int64_t n_seqs) {
    GGML_ASSERT(t->type == GGML_TYPE_F32 && t->ne[0] == n && ggml_nelements(t) == n * n_seqs &&
                t->nb[0] == sizeof(float) && (n_seqs == 1 || t->ne[1] == n_seqs));
}

// Row s of a per-sequence state (see check_rows_f32).
inline const float * row_f32(const ggml_tensor * t, int64_t s) {
    return reinterpret_cast<const float *>(static_cast<const char *>(t->data) + s * t->nb[1]);
}
inline float * row_f32_mut(const ggml_tensor * t, int64_t s) {
    return reinterpret_cast<float *>(static_cast<char *>(t->data) + s * t->nb[1]);
}

// The sum of term(j) for j < n, in double, as DOUBLE_LANES independent
// partial sums (a vector register of doubles) added at the end: the loop
// vectorises instead of waiting on one chain of additions.  The order of
// the additions is fixed by n alone.
constexpr int64_t DOUBLE_LANES = 8;
template <typename Term> RWKV_INLINE_IN_CLONES double lane_sum(int64_t n, Term term) {
    double part[DOUBLE_LANES] = {};
    int64_t j = 0;
    for (; j + DOUBLE_LANES <= n; j += DOUBLE_LANES) {
        for (int64_t l = 0; l < DOUBLE_LANES; ++l) {
            part[l] += term(j + l);
        }
    }
    for (; j < n; ++j) {
        part[0] += term(j);
    }
    double sum = 0.0;
    for (double p : part) {
        sum += p;
    }
    return sum;
}

// F.group_norm over one head's N values (biased variance, in double), then
// the affine ln_x weight and bias of those channels.
RWKV_INLINE_IN_CLONES void group_norm_head(int64_t N, const float * y, const float * w, const float * b, float eps,
                                           float * out) {
    const double mean = lane_sum(N, [y](int64_t j) { return static_cast<double>(y[j]); }) / static_cast<double>(N);
    const double var = lane_sum(N, [y, mean](int64_t j) {
                           const double d = y[j] - mean;
                           return d * d;
                       }) / static_cast<double>(N);
    const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
    for (int64_t j = 0; j < N; ++j) {
        out[j] = static_cast<float>((y[j] - mean) * inv) * w[j] + b[j];
    }
}

}  // namespace ops
}  // namespace rwkv
