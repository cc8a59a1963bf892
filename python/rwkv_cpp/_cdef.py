"""cffi declarations of rwkv.h (the block between RWKV_CDEF_BEGIN and
RWKV_CDEF_END, comments and RWKV_API removed).  tests/test_cdef.py checks that
this text matches the header."""

CDEF = """
enum rwkv_status {
    RWKV_STATUS_OK = 0,
    RWKV_STATUS_ERROR_INVALID_ARGUMENT = 1,
    RWKV_STATUS_ERROR_IO = 2,
    RWKV_STATUS_ERROR_FILE_FORMAT = 3,
    RWKV_STATUS_ERROR_UNSUPPORTED = 4,
    RWKV_STATUS_ERROR_ALLOC = 5,
    RWKV_STATUS_ERROR_COMPUTE = 6
};

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
    bool use_mmap;
    rwkv_log_callback log_callback;
    void * log_user_data;
};

struct rwkv_context_params {
    uint32_t n_threads;
    uint32_t max_chunk_tokens;
};

const char * rwkv_status_str(enum rwkv_status status);
const char * rwkv_type_str(enum rwkv_type type);

struct rwkv_model_params rwkv_model_default_params(void);
struct rwkv_context_params rwkv_context_default_params(void);

enum rwkv_status rwkv_model_load(
    const char * path,
    struct rwkv_model_params params,
    struct rwkv_model ** out_model,
    char * error_buf,
    size_t error_buf_size);

void rwkv_model_free(struct rwkv_model * model);

uint32_t rwkv_model_n_vocab(const struct rwkv_model * model);
uint32_t rwkv_model_n_embed(const struct rwkv_model * model);
uint32_t rwkv_model_n_layer(const struct rwkv_model * model);

const char * rwkv_model_version(const struct rwkv_model * model);

const char * rwkv_model_tokenizer(const struct rwkv_model * model);
enum rwkv_type rwkv_model_type(const struct rwkv_model * model);

size_t rwkv_model_state_len(const struct rwkv_model * model);

size_t rwkv_model_logits_len(const struct rwkv_model * model);

enum rwkv_status rwkv_state_init(
    const struct rwkv_model * model,
    float * state,
    size_t n_state);

enum rwkv_status rwkv_context_init(
    const struct rwkv_model * model,
    struct rwkv_context_params params,
    struct rwkv_context ** out_ctx,
    char * error_buf,
    size_t error_buf_size);

void rwkv_context_free(struct rwkv_context * ctx);

const char * rwkv_context_last_error(const struct rwkv_context * ctx);

enum rwkv_status rwkv_eval(
    struct rwkv_context * ctx,
    uint32_t token,
    const float * state_in,
    float * state_out,
    size_t n_state,
    float * logits_out,
    size_t n_logits);

enum rwkv_status rwkv_eval_sequence(
    struct rwkv_context * ctx,
    const uint32_t * tokens,
    size_t n_tokens,
    const float * state_in,
    float * state_out,
    size_t n_state,
    float * logits_out,
    size_t n_logits);
"""
