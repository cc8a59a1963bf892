/*
 * rwkv.h - C API of rwkv_cpp, a CPU runtime for RWKV language models.
 *
 * Objects and ownership:
 *   - struct rwkv_model   : immutable weights loaded from a GGUF file
 *                           (memory-mapped).  Shareable by threads.
 *   - struct rwkv_context : per-thread evaluation state (graphs, compute
 *                           buffers, thread pool).  One thread at a time.
 *   - the recurrent state : a float buffer owned by the caller; its length
 *                           (rwkv_model_state_len) is passed with every call.
 *
 * Errors: every fallible function returns enum rwkv_status.  Loading writes a
 * message into a caller buffer; a context keeps the message of its last
 * failed call (rwkv_context_last_error).  There is no global error state and
 * the library never prints: install a log callback to see its messages.
 *
 * This header is self-contained (no ggml include) and is parsed by the Python
 * package's cffi definitions: keep declarations on the plain C subset.
 */
#ifndef RWKV_H
#define RWKV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(RWKV_SHARED)
#    ifdef RWKV_BUILD
#        define RWKV_API __declspec(dllexport)
#    else
#        define RWKV_API __declspec(dllimport)
#    endif
#elif defined(RWKV_SHARED)
#    define RWKV_API __attribute__((visibility("default")))
#else
#    define RWKV_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* RWKV_CDEF_BEGIN (the Python package's cdef must match this block) */

enum rwkv_status {
    RWKV_STATUS_OK = 0,
    RWKV_STATUS_ERROR_INVALID_ARGUMENT = 1, /* bad pointer, length, token id, parameter */
    RWKV_STATUS_ERROR_IO = 2,               /* file missing, unreadable, mmap failed    */
    RWKV_STATUS_ERROR_FILE_FORMAT = 3,      /* not a valid model file, bad tensor       */
    RWKV_STATUS_ERROR_UNSUPPORTED = 4,      /* valid file, but a version/type we lack   */
    RWKV_STATUS_ERROR_ALLOC = 5,            /* out of memory                            */
    RWKV_STATUS_ERROR_COMPUTE = 6           /* graph computation failed                 */
};

/* Matrix storage type of a model file (GGUF key general.file_type). */
enum rwkv_type {
    RWKV_TYPE_FP32 = 0,
    RWKV_TYPE_FP16 = 1,
    RWKV_TYPE_Q8_0 = 2,
    RWKV_TYPE_Q5_0 = 3,
    RWKV_TYPE_Q5_1 = 4,
    RWKV_TYPE_Q4_0 = 5,
    RWKV_TYPE_Q4_1 = 6
};

enum rwkv_log_level {
    RWKV_LOG_LEVEL_DEBUG = 0,
    RWKV_LOG_LEVEL_INFO = 1,
    RWKV_LOG_LEVEL_WARN = 2,
    RWKV_LOG_LEVEL_ERROR = 3
};

/* Instruction sets of the library's own matrix kernels, in increasing
 * order (rwkv_model_params.packed_isa; docs/KERNELS.md). */
enum rwkv_packed_isa {
    RWKV_PACKED_ISA_AUTO = 0,        /* the best this CPU has                  */
    RWKV_PACKED_ISA_NONE = 1,        /* none: ggml's kernels (= repack false)  */
    RWKV_PACKED_ISA_AVX2 = 2,
    RWKV_PACKED_ISA_AVX512_VNNI = 3
};

typedef void (*rwkv_log_callback)(enum rwkv_log_level level, const char * text, void * user_data);

struct rwkv_model;
struct rwkv_context;

struct rwkv_model_params {
    bool use_mmap;                 /* map the file instead of reading it (default true) */
    /* Re-lay F16 and quantized matrices out for the library's own kernels
     * (AVX-512 VNNI or AVX2) at load (default true; a no-op on CPUs with
     * neither, see rwkv_packed_kernels_available and docs/KERNELS.md).
     * Costs a copy of those matrices at load, whose mapped pages are then
     * released; false keeps every weight in the file's pages (ggml kernels). */
    bool repack;
    /* The most capable packed kernels the model may use (default AUTO: the
     * best this CPU has).  A set this CPU lacks falls back to the best one
     * below it that it has (rwkv_model_packed_kernels_name says which runs);
     * a value outside the enum fails with RWKV_STATUS_ERROR_INVALID_ARGUMENT. */
    enum rwkv_packed_isa packed_isa;
    /* A packed-weight cache file (NULL: none; ignored without repack): when
     * it holds this model file's packed matrices, they are mapped from it
     * instead of packed (a faster load: no fresh memory to fill); otherwise
     * the load packs them and writes it (atomically; a failure to write is
     * logged as a warning).  It is made for one model file: a changed file
     * (size, modification time, first MiB) or library layout rewrites it. */
    const char * packed_cache;
    rwkv_log_callback log_callback; /* NULL: the library stays silent                    */
    void * log_user_data;
};

struct rwkv_context_params {
    uint32_t n_threads;            /* compute threads; 0 = number of online CPUs        */
    uint32_t max_chunk_tokens;     /* tokens per graph in eval_sequence; 0 = default    */
};

/* Quantization settings (rwkv_quantize_default_params gives the defaults). */
struct rwkv_quantize_params {
    uint32_t n_threads;            /* 0 = number of online CPUs                         */
    bool quantize_head;            /* quantize head.weight too (default: see docs)      */
    bool quantize_emb;             /* quantize emb.weight too (default: see docs)       */
    /* Called after each tensor with the fraction done; return false to cancel. */
    bool (*progress_callback)(float fraction, void * user_data);
    void * progress_user_data;
    char * error_buf;              /* receives the message of a failure (may be NULL)  */
    size_t error_buf_size;
};

RWKV_API const char * rwkv_status_str(enum rwkv_status status);
RWKV_API const char * rwkv_type_str(enum rwkv_type type);

RWKV_API struct rwkv_model_params rwkv_model_default_params(void);

/* Whether this CPU runs the library's own matrix kernels (AVX-512 VNNI or
 * AVX2, checked at run time), i.e. whether rwkv_model_params.repack takes
 * effect.  A debugging override, the environment variable
 * RWKV_CPP_PACKED_ISA=avx2|none read once per process, caps the kernels of
 * every model below what the CPU and packed_isa allow (it never raises them). */
RWKV_API bool rwkv_packed_kernels_available(void);
/* The best of them (what RWKV_PACKED_ISA_AUTO picks): "AVX-512 VNNI", "AVX2" or "none". */
RWKV_API const char * rwkv_packed_kernels_name(void);

RWKV_API struct rwkv_context_params rwkv_context_default_params(void);

/* Loads a model.  On failure returns a status, sets *out_model to NULL and
 * writes a NUL-terminated message into error_buf (if error_buf_size > 0). */
RWKV_API enum rwkv_status rwkv_model_load(
    const char * path,
    struct rwkv_model_params params,
    struct rwkv_model ** out_model,
    char * error_buf,
    size_t error_buf_size);

/* Frees a model; NULL is allowed.  All contexts of the model must be freed first. */
RWKV_API void rwkv_model_free(struct rwkv_model * model);

RWKV_API uint32_t rwkv_model_n_vocab(const struct rwkv_model * model);
RWKV_API uint32_t rwkv_model_n_embed(const struct rwkv_model * model);
RWKV_API uint32_t rwkv_model_n_layer(const struct rwkv_model * model);
/* Architecture version as written in the file: "4", "5.0", "5.1", "5.2", "6.0" or "7.0". */
RWKV_API const char * rwkv_model_version(const struct rwkv_model * model);
/* Tokenizer name recorded in the file ("20B", "world", "bytes") or "". */
RWKV_API const char * rwkv_model_tokenizer(const struct rwkv_model * model);
RWKV_API enum rwkv_type rwkv_model_type(const struct rwkv_model * model);
/* Number of floats in one recurrent state. */
RWKV_API size_t rwkv_model_state_len(const struct rwkv_model * model);
/* Number of floats of logits (= n_vocab). */
RWKV_API size_t rwkv_model_logits_len(const struct rwkv_model * model);
/* Bytes of the matrices laid out for the packed kernels at load (0 when
 * rwkv_model_params.repack was false or this CPU has no packed kernels). */
RWKV_API size_t rwkv_model_packed_bytes(const struct rwkv_model * model);
/* The packed kernels this model runs: "AVX-512 VNNI", "AVX2", or "none" when
 * it packed no matrix (repack false, packed_isa NONE, a CPU without them, or
 * no F16 or quantized matrix). */
RWKV_API const char * rwkv_model_packed_kernels_name(const struct rwkv_model * model);

/* Whether the file carries a tuned initial state (RWKV-5/6/7 state tuning:
 * the tensors blocks.N.att.time_state), which rwkv_state_init writes and a
 * NULL state_in starts from. */
RWKV_API bool rwkv_model_has_tuned_state(const struct rwkv_model * model);

/* Writes the initial state (v4: zeros, and -1e30 in the max-exponent slots;
 * v5, v6, v7: zeros, or the file's tuned WKV matrices when it carries them).
 * Layouts: docs/FORMAT.md. */
RWKV_API enum rwkv_status rwkv_state_init(
    const struct rwkv_model * model,
    float * state,
    size_t n_state);

RWKV_API enum rwkv_status rwkv_context_init(
    const struct rwkv_model * model,
    struct rwkv_context_params params,
    struct rwkv_context ** out_ctx,
    char * error_buf,
    size_t error_buf_size);

/* Frees a context; NULL is allowed. */
RWKV_API void rwkv_context_free(struct rwkv_context * ctx);

/* Message of the last failed call on this context ("" after a success). */
RWKV_API const char * rwkv_context_last_error(const struct rwkv_context * ctx);

/* Evaluates one token.
 *   state_in  : n_state floats, or NULL for the initial state;
 *   state_out : n_state floats (may equal state_in);
 *   logits_out: n_logits floats, or NULL to skip the head (n_logits ignored). */
RWKV_API enum rwkv_status rwkv_eval(
    struct rwkv_context * ctx,
    uint32_t token,
    const float * state_in,
    float * state_out,
    size_t n_state,
    float * logits_out,
    size_t n_logits);

/* Evaluates n_tokens >= 1 tokens in order; logits are those of the last
 * token.  Any length is accepted (processed in chunks internally). */
RWKV_API enum rwkv_status rwkv_eval_sequence(
    struct rwkv_context * ctx,
    const uint32_t * tokens,
    size_t n_tokens,
    const float * state_in,
    float * state_out,
    size_t n_state,
    float * logits_out,
    size_t n_logits);

/* Like rwkv_eval_sequence, but writes the logits of every token:
 * logits_out holds n_tokens * n_vocab floats, token-major (n_logits must be
 * exactly that).  For perplexity and scoring. */
RWKV_API enum rwkv_status rwkv_eval_sequence_all_logits(
    struct rwkv_context * ctx,
    const uint32_t * tokens,
    size_t n_tokens,
    const float * state_in,
    float * state_out,
    size_t n_state,
    float * logits_out,
    size_t n_logits);

/* One sequence of a batch (rwkv_eval_batch). */
struct rwkv_batch_seq {
    const uint32_t * tokens;       /* n_tokens >= 1 token ids, evaluated in order       */
    size_t n_tokens;
    const float * state_in;        /* n_state floats, or NULL for the initial state     */
    float * state_out;             /* n_state floats (may equal state_in, or any other
                                      sequence's state_in: all are read before any is
                                      written)                                          */
    float * logits_out;            /* NULL: no logits for this sequence; else n_logits
                                      floats: n_vocab (the last token's), or
                                      n_tokens * n_vocab token-major with all_logits    */
    size_t n_logits;
};

/* Evaluates n_seq >= 1 independent sequences in one pass over the weights
 * (continuous batching): each has its own state and its own number of new
 * tokens (1 for a decode step, many for a prompt, mixed in one call).  The
 * tokens of all sequences go through each matrix product together; the
 * token shift, the WKV recurrence and the state stay per sequence.  Each
 * sequence's logits and new state are bit for bit those of
 * rwkv_eval_sequence (or rwkv_eval_sequence_all_logits) on it alone, on a
 * context with the same max_chunk_tokens.
 *
 * Every argument is checked before anything is computed (n_seq, each
 * sequence's tokens, ids < n_vocab, state_out, n_logits, n_state ==
 * rwkv_model_state_len); on any failure no state_out is written.  The new
 * states are written only once every sequence is done; logits are written
 * as they come.
 *
 * Up to max_chunk_tokens tokens (rwkv_context_params) go through one graph;
 * more are split into several passes, a sequence continuing in the next.
 * Graphs are cached by shape (16 per context): a pass of t tokens and s
 * sequences runs in a graph of T columns and S slots, T = t rounded up (t
 * <= 16: to the next power of two, else to the next multiple of 1/8 of the
 * power of two at or above t; at most max_chunk_tokens) and S = min(the
 * power of two at or above s, T), so that any mix of a given size reuses a
 * few graphs. */
RWKV_API enum rwkv_status rwkv_eval_batch(
    struct rwkv_context * ctx,
    const struct rwkv_batch_seq * seqs,
    size_t n_seq,
    size_t n_state,
    bool all_logits);

RWKV_API struct rwkv_quantize_params rwkv_quantize_default_params(void);

/* Writes a copy of the model file `in` with its matrices stored as `type`
 * (1-D parameters stay FP32; see docs/QUANTIZATION.md for the policy).
 * Streams tensor by tensor; `out` appears only when complete.  Quantizing a
 * quantized file to another quantized type is refused.  params may be NULL. */
RWKV_API enum rwkv_status rwkv_quantize(
    const char * in,
    const char * out,
    enum rwkv_type type,
    const struct rwkv_quantize_params * params);

/* Stores n_rows x n_per_row float32 values (row-major) as `type` into dst
 * (dst_size bytes: n_rows times the row size of the type), as rwkv_quantize
 * stores a matrix; n_per_row must be a multiple of the type's block (32 for
 * the quantized types).  n_threads: 0 = number of online CPUs. */
RWKV_API enum rwkv_status rwkv_quantize_rows(
    enum rwkv_type type,
    const float * src,
    int64_t n_rows,
    int64_t n_per_row,
    void * dst,
    size_t dst_size,
    uint32_t n_threads,
    char * error_buf,
    size_t error_buf_size);

/* One row of rwkv_sample_rows: a distribution over the n_vocab tokens. */
struct rwkv_sample_row {
    const double * probs;    /* n_vocab probabilities up to a common factor,
                                finite and >= 0 (e.g. exp(logit - max logit));
                                0 for a banned token                            */
    const double * weights;  /* n_vocab draw weights, finite and >= 0 (e.g.
                                exp((logit - max) / temperature)), or NULL for
                                probs (temperature 1)                           */
    double top_p;            /* in [0, 1]; 1 keeps every token                  */
    int32_t top_k;           /* >= 0; 0: no limit                               */
    double u;                /* a uniform draw in [0, 1) from the caller's
                                generator                                      */
};

/* Draws one token per row, in float64:
 * 1. top-p: with S the sum of probs in id order, the candidates are the
 *    tokens whose prob is >= the value at which the cumulative sum of the
 *    probs in decreasing order first reaches top_p * S (every token if it
 *    never does, or top_p is 1);
 * 2. top-k (top_k > 0 and fewer than the candidates): the top_k candidates
 *    with the largest probs; of those tied with the k-th, the lowest ids;
 * 3. the draw: with C the cumulative sum of the candidates' weights in id
 *    order, the first candidate whose C exceeds u * (the last C); the last
 *    candidate with a weight > 0 if rounding leaves none.
 * The sums are sequential, so the token is a function of the inputs alone
 * (rwkv_cpp.sampling holds the same steps in numpy as the reference).  Every
 * row is checked first (NULL probs, top_p, top_k, u, non-finite or negative
 * values, no candidate with a weight > 0); on failure tokens_out is not
 * written.  n_rows may be 0. */
RWKV_API enum rwkv_status rwkv_sample_rows(
    const struct rwkv_sample_row * rows,
    size_t n_rows,
    size_t n_vocab,
    int32_t * tokens_out,
    char * error_buf,
    size_t error_buf_size);

/* Greedy longest-match tokenizer over bytes (the RWKV "World" tokenizer):
 * at each position the longest vocabulary entry that prefixes the rest of
 * the input is emitted.  Immutable once made; shareable by threads. */
struct rwkv_tokenizer;

/* Makes a tokenizer of n_tokens entries.  Entry i has id ids[i] and is
 * lengths[i] >= 1 bytes of `data`, the entries lying back to back (the
 * lengths must sum to data_size).  Entries must be distinct and every single
 * byte value must be an entry, so that any input can be encoded.  On failure
 * returns a status, sets *out_tokenizer to NULL and writes a message into
 * error_buf (if error_buf_size > 0). */
RWKV_API enum rwkv_status rwkv_tokenizer_init(
    const uint8_t * data,
    size_t data_size,
    const uint32_t * lengths,
    const uint32_t * ids,
    size_t n_tokens,
    struct rwkv_tokenizer ** out_tokenizer,
    char * error_buf,
    size_t error_buf_size);

/* Frees a tokenizer; NULL is allowed. */
RWKV_API void rwkv_tokenizer_free(struct rwkv_tokenizer * tokenizer);

/* Encodes n_bytes bytes of text (any bytes, not only UTF-8).  Sets *n_out to
 * the number of ids; if that exceeds capacity, only the first capacity ids
 * are written and RWKV_STATUS_ERROR_INVALID_ARGUMENT is returned (call again
 * with *n_out ids of room).  capacity = n_bytes always suffices. */
RWKV_API enum rwkv_status rwkv_tokenizer_encode(
    const struct rwkv_tokenizer * tokenizer,
    const uint8_t * text,
    size_t n_bytes,
    uint32_t * out_ids,
    size_t capacity,
    size_t * n_out);

/* RWKV_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* RWKV_H */
