// Test hooks: exported for tests/test_packed.py (which declares them in its
// own cffi cdef), not part of the public API in rwkv.h.  They run one kernel
// of the library on caller-supplied arrays so that the fast path can be
// compared with its naive reference and with ggml.
#pragma once

#include "rwkv.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Quantizes w ([rows][cols] floats) to ggml_type with ggml, then computes
 * y[t][r] = sum_k W[r][k] * x[t][k] for t < n_tokens with
 *   mode 0: the packed matrix and the AVX-512 kernels (activation included),
 *   mode 1: the packed matrix and the naive references,
 *   mode 2: ggml's own mul_mat on the ggml blocks.
 * w_dequant (may be NULL) receives ggml's dequantized W ([rows][cols]). */
RWKV_API enum rwkv_status rwkv_testing_packed_matmul(int ggml_type, const float * w, int64_t rows, int64_t cols,
                                                     const float * x, int64_t n_tokens, int mode, float * y,
                                                     float * w_dequant);

/* Quantizes n_tokens activation columns of cols floats (the packed kernels'
 * 8-bit activation) with the AVX-512 path (simd = 1) or the reference; out
 * receives n_tokens * rwkv_testing_quantized_column_bytes(cols) bytes. */
RWKV_API size_t rwkv_testing_quantized_column_bytes(int64_t cols);
RWKV_API enum rwkv_status rwkv_testing_quantize_activation(const float * x, int64_t cols, int64_t n_tokens, int simd,
                                                           uint8_t * out);

#ifdef __cplusplus
}
#endif
