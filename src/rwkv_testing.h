// Test hooks: exported by librwkv_cpp_testing only (the library's code plus
// these hooks, built beside librwkv_cpp and loaded by the tests alone), not
// part of the public API in rwkv.h.  They run one kernel or one custom op of
// the library on caller-supplied arrays, so that each can be compared with a
// naive reference.  tests/_testing_cdef.py is generated from the block
// between RWKV_CDEF_BEGIN and RWKV_CDEF_END by tools/gen_cdef.py, and
// tests/test_cdef.py checks that it matches.
#pragma once

#include "rwkv.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* RWKV_CDEF_BEGIN (the tests' cdef of the hooks must match this block) */

/* Kernel sets of the packed-matrix hooks. */
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

/* packed_products (rwkv_packed.h) of n (1..8) matrices, each quantized to
 * ggml_type with ggml from w[i] ([rows[i]][cols[i]] floats), on x[i]
 * ([n_tokens][cols[i]]), activation act[i] (0 none, 1 tanh, 2 sigmoid,
 * 3 relu squared), as one ggml node computed by n_threads (1..64) threads
 * with the kernel set `kernels` (not GGML).  y receives the blocks one after
 * another, block i [n_tokens][rows[i]]. */
RWKV_API enum rwkv_status rwkv_testing_packed_products(int ggml_type, int n, const float * const * w,
                                                       const int64_t * rows, const int64_t * cols,
                                                       const float * const * x, const int32_t * act, int64_t n_tokens,
                                                       int kernels, int n_threads, float * y);

/* Quantizes n_tokens activation columns of cols floats (the packed kernels'
 * 8-bit activation) with a kernel set other than GGML; out receives
 * n_tokens * rwkv_testing_quantized_column_bytes(cols) bytes. */
RWKV_API size_t rwkv_testing_quantized_column_bytes(int64_t cols);
RWKV_API enum rwkv_status rwkv_testing_quantize_activation(const float * x, int64_t cols, int64_t n_tokens,
                                                           int kernels, uint8_t * out);

/* The custom ggml ops of src/rwkv_ops.h, for rwkv_testing_run_op.  Inputs
 * are given in the order of the op's declaration there (D = n_embed,
 * T = n_tokens, N = head_size; a [D, T] tensor is T rows of D floats):
 *   LN_SHIFT_MIX    x [D,T], w, b, x_prev [D], n_mix mixes [D];
 *                   out [D, n_mix*T], side_out x_prev_out [D]
 *   SHIFT_MIX_*     xx [D,T], x_prev [D], n_mix mu [D]; out [D,T,n_mix]
 *   SHIFT_MIX_LORA  xx [D,T], x_prev [D], m [D,T,5], 5 maa [D]; out [D,T,5]
 *   WKV4_GATED      k, v, r [D,T], first, decay [D], state_in [3D];
 *                   out [D,T], side_out state_out [3D]
 *   WKV5            r, k, v [D,T], decay [D], decay_lora [D,T] or NULL,
 *                   bonus, lnx_w, lnx_b [D], state [D*N]; out [D, T+N]
 *   WKV7_PREPARE    k, v, a_lora [D,T], a0, k_k, k_a [D], then v_lora [D,T],
 *                   v0 [D], v_first [D,T] (all three or none); out [D,T,4]
 *   WKV7            r, w_lora [D,T], w0 [D], prep [D,T,4], r_k, lnx_w,
 *                   lnx_b [D], state [D*N]; out [D, T+N]
 *   RELU_SQ         x [D,T]; out [D,T]
 *   GATED_RESIDUAL  x, r, v [D,T]; out [D,T] */
enum rwkv_testing_op {
    RWKV_TESTING_OP_LN_SHIFT_MIX = 0,
    RWKV_TESTING_OP_SHIFT_MIX_WEIGHTED_SUM = 1, /* MixForm::WeightedSum */
    RWKV_TESTING_OP_SHIFT_MIX_ADD_DELTA = 2,    /* MixForm::AddDelta */
    RWKV_TESTING_OP_SHIFT_MIX_LORA = 3,
    RWKV_TESTING_OP_WKV4_GATED = 4,
    RWKV_TESTING_OP_WKV5 = 5,
    RWKV_TESTING_OP_WKV7_PREPARE = 6,
    RWKV_TESTING_OP_WKV7 = 7,
    RWKV_TESTING_OP_RELU_SQ = 8,
    RWKV_TESTING_OP_GATED_RESIDUAL = 9
};

struct rwkv_testing_op_args {
    int64_t n_embed;
    int64_t n_tokens;
    int64_t n_head;            /* WKV5, WKV7_PREPARE, WKV7 */
    int64_t head_size;         /* WKV5, WKV7_PREPARE, WKV7 */
    int32_t n_mix;             /* LN_SHIFT_MIX, SHIFT_MIX_* */
    int32_t n_threads;         /* ggml threads computing the op (1..64) */
    float eps;                 /* LN_SHIFT_MIX, WKV5, WKV7 */
    const float * inputs[16];  /* as listed above; the rest NULL */
    float * out;               /* out_len floats */
    int64_t out_len;
    float * side_out;          /* side_len floats, or NULL for ops without one */
    int64_t side_len;
};

/* Builds a one-op ggml graph on copies of the inputs, computes it with
 * args->n_threads threads and copies the results out. */
RWKV_API enum rwkv_status rwkv_testing_run_op(int op, const struct rwkv_testing_op_args * args);

/* Builds the evaluation graph of the model file at path (default load
 * parameters) for n_tokens tokens and logits mode 0 (none), 1 (last token)
 * or 2 (every token), and writes the names of its nodes, in order, joined
 * by '\n' and NUL-terminated, into buf (truncated to size).  Returns the
 * bytes the whole text needs (NUL included), 0 on failure. */
RWKV_API size_t rwkv_testing_graph_node_names(const char * path, uint32_t n_tokens, int logits, char * buf,
                                              size_t size);

/* Makes a context (1 thread, max_chunk_tokens as given) on the model file
 * at path and evaluates n_batches batches on it with rwkv_eval_batch: batch
 * i has n_seqs[i] sequences whose lengths are the next n_seqs[i] entries of
 * lengths (tokens all 0, initial states, last-token logits).  Returns the
 * number of graphs the context built, 0 on failure. */
RWKV_API uint64_t rwkv_testing_batch_graphs_built(const char * path, uint32_t max_chunk_tokens,
                                                  const uint32_t * n_seqs, size_t n_batches,
                                                  const uint32_t * lengths);

/* The top-p cut-off of probs[0, n) (rwkv_sampling.h) at top_p: the fast
 * one (bucketed masses, sorted whole when undecided) if sorted is 0, else
 * the one of the definition (a full sort).  NaN on failure. */
RWKV_API double rwkv_testing_top_p_cutoff(const double * probs, int64_t n, double top_p, int sorted);

/* y[i] = e^x[i] for i < n by the vectorisable exp of the kernels
 * (ops::exp_poly, at this CPU's instruction set). */
RWKV_API void rwkv_testing_exp_poly(const float * x, float * y, int64_t n);

/* RWKV_CDEF_END */

#ifdef __cplusplus
}
#endif
