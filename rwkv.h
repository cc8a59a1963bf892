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

typedef void (*rwkv_log_callback)(enum rwkv_log_level level, const char * text, void * user_data);

struct rwkv_model;
struct rwkv_context;

struct rwkv_model_params {
    bool use_mmap;                 /* map the file instead of reading it (default true) */
    rwkv_log_callback log_callback; /* NULL: the library stays silent                    */
    void * log_user_data;
};

struct rwkv_context_params {
    uint32_t n_threads;            /* compute threads; 0 = number of online CPUs        */
    uint32_t max_chunk_tokens;     /* tokens per graph in eval_sequence; 0 = default    */
};

RWKV_API const char * rwkv_status_str(enum rwkv_status status);
RWKV_API const char * rwkv_type_str(enum rwkv_type type);

RWKV_API struct rwkv_model_params rwkv_model_default_params(void);
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
/* Architecture version as written in the file: "4", later "5.0" ... "7.0". */
RWKV_API const char * rwkv_model_version(const struct rwkv_model * model);
/* Tokenizer name recorded in the file ("20B", "world", "bytes") or "". */
RWKV_API const char * rwkv_model_tokenizer(const struct rwkv_model * model);
RWKV_API enum rwkv_type rwkv_model_type(const struct rwkv_model * model);
/* Number of floats in one recurrent state. */
RWKV_API size_t rwkv_model_state_len(const struct rwkv_model * model);
/* Number of floats of logits (= n_vocab). */
RWKV_API size_t rwkv_model_logits_len(const struct rwkv_model * model);

/* Writes the initial state (v4: zeros, and -1e30 in the max-exponent slots). */
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

/* RWKV_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* RWKV_H */
