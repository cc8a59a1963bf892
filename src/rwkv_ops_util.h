// Small helpers shared by the CPU kernels of the custom ggml operations
// (rwkv_ops_*.cpp, rwkv_packed.cpp): tensor data accessors, the logistic
// function, the split of a kernel's work between ggml's threads, and the
// per-head GroupNorm (ln_x) of the WKV-5/6/7 ops.
#pragma once

#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace rwkv {
namespace ops {

inline const float * f32(const ggml_tensor * t) { return static_cast<const float *>(t->data); }
inline float * f32_mut(const ggml_tensor * t) { return static_cast<float *>(t->data); }

// torch.sigmoid(x)
inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

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

// F.group_norm over one head's N values (biased variance, in double), then
// the affine ln_x weight and bias of those channels.
inline void group_norm_head(int64_t N, const float * y, const float * w, const float * b, float eps, float * out) {
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

}  // namespace ops
}  // namespace rwkv
