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

/* Kernel sets of the test hooks. */
enum rwkv_testing_kernels {
    RWKV_TESTING_REFERENCE = 0, /* the packed layout, naive C++ */
    RWKV_TESTING_AVX2 = 1,      /* the packed layout, AVX2 kernels */
    RWKV_TESTING_AVX512 = 2,    /* the packed layout, AVX-512 VNNI kernels */
    RWKV_TESTING_GGML = 3       /* ggml's mul_mat on the ggml blocks */
};

/* 1 when this CPU can run that kernel set. */
RWKV_API int rwkv_testing_cpu_runs(int kernels);

/* Quantizes w ([rows][cols] floats) to ggml_type with ggml, then computes
 * y[t][r] = sum_k W[r][k] * x[t][k] for t < n_tokens with the kernel set
 * mode (the activation quantized by the same set).  w_dequant (may be NULL)
 * receives ggml's dequantized W ([rows][cols]). */
RWKV_API enum rwkv_status rwkv_testing_packed_matmul(int ggml_type, const float * w, int64_t rows, int64_t cols,
                                                     const float * x, int64_t n_tokens, int mode, float * y,
                                                     float * w_dequant);

/* Quantizes n_tokens activation columns of cols floats (the packed kernels'
 * 8-bit activation) with a kernel set other than GGML; out receives
 * n_tokens * rwkv_testing_quantized_column_bytes(cols) bytes. */
RWKV_API size_t rwkv_testing_quantized_column_bytes(int64_t cols);
RWKV_API enum rwkv_status rwkv_testing_quantize_activation(const float * x, int64_t cols, int64_t n_tokens,
                                                           int kernels, uint8_t * out);

/* Builds the evaluation graph of the model file at path (default load
 * parameters) for n_tokens tokens and logits mode 0 (none), 1 (last token)
 * or 2 (every token), and writes the names of its nodes, in order, joined
 * by '\n' and NUL-terminated, into buf (truncated to size).  Returns the
 * bytes the whole text needs (NUL included), 0 on failure. */
RWKV_API size_t rwkv_testing_graph_node_names(const char * path, uint32_t n_tokens, int logits, char * buf,
                                              size_t size);

#ifdef __cplusplus
}
#endif
