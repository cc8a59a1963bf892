// C API of rwkv_cpp: argument checks and the conversion of internal errors
// (rwkv::Error, std::bad_alloc, anything else) into status codes.
#include "rwkv.h"

#include "rwkv_common.h"
#include "rwkv_context.h"
#include "rwkv_model.h"
#include "rwkv_quantize.h"
#include "rwkv_sampling.h"
#include "rwkv_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

struct rwkv_model {
    std::unique_ptr<rwkv::Model> impl;
};

struct rwkv_context {
    std::unique_ptr<rwkv::Context> impl;
    std::string last_error;
};

struct rwkv_tokenizer {
    std::unique_ptr<rwkv::Tokenizer> impl;
};

namespace {

void write_message(char * buf, size_t size, const std::string & msg) {
    if (buf == nullptr || size == 0) {
        return;
    }
    const size_t n = std::min(size - 1, msg.size());
    std::memcpy(buf, msg.data(), n);
    buf[n] = '\0';
}

// Runs fn, converting any exception into a status and a message.
template <typename Fn>
rwkv_status guarded(std::string & message, Fn && fn) {
    try {
        fn();
        message.clear();
        return RWKV_STATUS_OK;
    } catch (const rwkv::Error & e) {
        message = e.what();
        return e.status();
    } catch (const std::bad_alloc &) {
        message = "out of memory";
        return RWKV_STATUS_ERROR_ALLOC;
    } catch (const std::exception & e) {
        message = std::string("internal error: ") + e.what();
        return RWKV_STATUS_ERROR_COMPUTE;
    }
}

}  // namespace

extern "C" {

const char * rwkv_status_str(enum rwkv_status status) {
    switch (rwkv::c_enum_value(status)) {
        case RWKV_STATUS_OK: return "ok";
        case RWKV_STATUS_ERROR_INVALID_ARGUMENT: return "invalid argument";
        case RWKV_STATUS_ERROR_IO: return "I/O error";
        case RWKV_STATUS_ERROR_FILE_FORMAT: return "invalid model file";
        case RWKV_STATUS_ERROR_UNSUPPORTED: return "unsupported model";
        case RWKV_STATUS_ERROR_ALLOC: return "out of memory";
        case RWKV_STATUS_ERROR_COMPUTE: return "computation failed";
    }
    return "unknown status";
}

const char * rwkv_type_str(enum rwkv_type type) {
    const int t = rwkv::c_enum_value(type);
    return t >= RWKV_TYPE_FP32 && t <= RWKV_TYPE_Q4_1 ? rwkv::type_name(static_cast<rwkv_type>(t)) : "unknown";
}

bool rwkv_packed_kernels_available(void) { return rwkv::packed_kernels_available(); }

const char * rwkv_packed_kernels_name(void) { return rwkv::packed_isa_name(rwkv::packed_isa()); }

struct rwkv_model_params rwkv_model_default_params(void) { return rwkv::default_model_params(); }

struct rwkv_context_params rwkv_context_default_params(void) { return rwkv::default_context_params(); }

enum rwkv_status rwkv_model_load(const char * path, struct rwkv_model_params params, struct rwkv_model ** out_model,
                                 char * error_buf, size_t error_buf_size) {
    std::string message;
    if (out_model == nullptr || path == nullptr) {
        write_message(error_buf, error_buf_size, "rwkv_model_load: path and out_model must not be NULL");
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    *out_model = nullptr;
    rwkv_model * model = nullptr;
    const rwkv_status st = guarded(message, [&] {
        auto impl = rwkv::Model::load(path, params);
        model = new rwkv_model{std::move(impl)};
    });
    *out_model = model;
    write_message(error_buf, error_buf_size, message);
    return st;
}

void rwkv_model_free(struct rwkv_model * model) { delete model; }

uint32_t rwkv_model_n_vocab(const struct rwkv_model * m) { return m->impl->hparams().n_vocab; }
uint32_t rwkv_model_n_embed(const struct rwkv_model * m) { return m->impl->hparams().n_embed; }
uint32_t rwkv_model_n_layer(const struct rwkv_model * m) { return m->impl->hparams().n_layer; }
const char * rwkv_model_version(const struct rwkv_model * m) { return m->impl->hparams().version.c_str(); }
const char * rwkv_model_tokenizer(const struct rwkv_model * m) { return m->impl->hparams().tokenizer.c_str(); }
enum rwkv_type rwkv_model_type(const struct rwkv_model * m) { return m->impl->hparams().file_type; }
size_t rwkv_model_state_len(const struct rwkv_model * m) { return m->impl->state_len(); }
size_t rwkv_model_logits_len(const struct rwkv_model * m) { return m->impl->hparams().n_vocab; }
size_t rwkv_model_packed_bytes(const struct rwkv_model * m) { return m->impl->packed_bytes(); }
const char * rwkv_model_packed_kernels_name(const struct rwkv_model * m) {
    return rwkv::packed_isa_name(m->impl->packed_kernels());
}

bool rwkv_model_has_tuned_state(const struct rwkv_model * m) { return m->impl->has_tuned_state(); }

enum rwkv_status rwkv_state_init(const struct rwkv_model * model, float * state, size_t n_state) {
    if (model == nullptr || state == nullptr || n_state != model->impl->state_len()) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    model->impl->init_state(state);
    return RWKV_STATUS_OK;
}

enum rwkv_status rwkv_context_init(const struct rwkv_model * model, struct rwkv_context_params params,
                                   struct rwkv_context ** out_ctx, char * error_buf, size_t error_buf_size) {
    if (model == nullptr || out_ctx == nullptr) {
        write_message(error_buf, error_buf_size, "rwkv_context_init: model and out_ctx must not be NULL");
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    *out_ctx = nullptr;
    std::string message;
    rwkv_context * ctx = nullptr;
    const rwkv_status st = guarded(message, [&] {
        auto impl = std::make_unique<rwkv::Context>(*model->impl, params);
        ctx = new rwkv_context{std::move(impl), std::string()};
    });
    *out_ctx = ctx;
    write_message(error_buf, error_buf_size, message);
    return st;
}

void rwkv_context_free(struct rwkv_context * ctx) { delete ctx; }

const char * rwkv_context_last_error(const struct rwkv_context * ctx) {
    return ctx == nullptr ? "context is NULL" : ctx->last_error.c_str();
}

enum rwkv_status rwkv_eval(struct rwkv_context * ctx, uint32_t token, const float * state_in, float * state_out,
                           size_t n_state, float * logits_out, size_t n_logits) {
    return rwkv_eval_sequence(ctx, &token, 1, state_in, state_out, n_state, logits_out, n_logits);
}

enum rwkv_status rwkv_eval_sequence(struct rwkv_context * ctx, const uint32_t * tokens, size_t n_tokens,
                                    const float * state_in, float * state_out, size_t n_state, float * logits_out,
                                    size_t n_logits) {
    if (ctx == nullptr) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    return guarded(ctx->last_error, [&] {
        ctx->impl->eval(tokens, n_tokens, state_in, state_out, n_state, logits_out, n_logits, false);
    });
}

enum rwkv_status rwkv_eval_batch(struct rwkv_context * ctx, const struct rwkv_batch_seq * seqs, size_t n_seq,
                                 size_t n_state, bool all_logits) {
    if (ctx == nullptr) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    return guarded(ctx->last_error, [&] { ctx->impl->eval_batch(seqs, n_seq, n_state, all_logits); });
}

enum rwkv_status rwkv_eval_sequence_all_logits(struct rwkv_context * ctx, const uint32_t * tokens, size_t n_tokens,
                                               const float * state_in, float * state_out, size_t n_state,
                                               float * logits_out, size_t n_logits) {
    if (ctx == nullptr) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    return guarded(ctx->last_error, [&] {
        if (logits_out == nullptr) {
            rwkv::fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "logits_out is NULL");
        }
        ctx->impl->eval(tokens, n_tokens, state_in, state_out, n_state, logits_out, n_logits, true);
    });
}

struct rwkv_quantize_params rwkv_quantize_default_params(void) { return rwkv::default_quantize_params(); }

enum rwkv_status rwkv_quantize(const char * in, const char * out, enum rwkv_type type,
                               const struct rwkv_quantize_params * params) {
    const rwkv_quantize_params p = params != nullptr ? *params : rwkv_quantize_default_params();
    std::string message;
    rwkv_status st;
    const int t = rwkv::c_enum_value(type);
    if (in == nullptr || out == nullptr) {
        message = "rwkv_quantize: in and out must not be NULL";
        st = RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    } else if (t < RWKV_TYPE_FP32 || t > RWKV_TYPE_Q4_1) {
        message = rwkv::format("unknown target type %d", t);
        st = RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    } else {
        st = guarded(message, [&] { rwkv::quantize_file(in, out, static_cast<rwkv_type>(t), p); });
    }
    write_message(p.error_buf, p.error_buf_size, message);
    return st;
}

enum rwkv_status rwkv_quantize_rows(enum rwkv_type type, const float * src, int64_t n_rows, int64_t n_per_row,
                                    void * dst, size_t dst_size, uint32_t n_threads, char * error_buf,
                                    size_t error_buf_size) {
    std::string message;
    rwkv_status st;
    const int t = rwkv::c_enum_value(type);
    if (src == nullptr || dst == nullptr) {
        message = "rwkv_quantize_rows: src and dst must not be NULL";
        st = RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    } else if (t < RWKV_TYPE_FP32 || t > RWKV_TYPE_Q4_1) {
        message = rwkv::format("unknown target type %d", t);
        st = RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    } else {
        st = guarded(message, [&] {
            rwkv::quantize_rows(static_cast<rwkv_type>(t), src, n_rows, n_per_row, dst, dst_size, n_threads);
        });
    }
    write_message(error_buf, error_buf_size, message);
    return st;
}

enum rwkv_status rwkv_sample_rows(const struct rwkv_sample_row * rows, size_t n_rows, size_t n_vocab,
                                  int32_t * tokens_out, char * error_buf, size_t error_buf_size) {
    std::string message;
    rwkv_status st;
    if (n_rows > 0 && (rows == nullptr || tokens_out == nullptr)) {
        message = "rwkv_sample_rows: rows and tokens_out must not be NULL";
        st = RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    } else {
        st = guarded(message, [&] {
            std::vector<int32_t> tokens(n_rows);
            rwkv::sample_rows(rows, n_rows, n_vocab, tokens.data());
            std::copy(tokens.begin(), tokens.end(), tokens_out);
        });
    }
    write_message(error_buf, error_buf_size, message);
    return st;
}

enum rwkv_status rwkv_tokenizer_init(const uint8_t * data, size_t data_size, const uint32_t * lengths,
                                     const uint32_t * ids, size_t n_tokens, struct rwkv_tokenizer ** out_tokenizer,
                                     char * error_buf, size_t error_buf_size) {
    if (out_tokenizer == nullptr) {
        write_message(error_buf, error_buf_size, "rwkv_tokenizer_init: out_tokenizer must not be NULL");
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    *out_tokenizer = nullptr;
    std::string message;
    rwkv_tokenizer * tokenizer = nullptr;
    const rwkv_status st = guarded(message, [&] {
        auto impl = std::make_unique<rwkv::Tokenizer>(data, data_size, lengths, ids, n_tokens);
        tokenizer = new rwkv_tokenizer{std::move(impl)};
    });
    *out_tokenizer = tokenizer;
    write_message(error_buf, error_buf_size, message);
    return st;
}

void rwkv_tokenizer_free(struct rwkv_tokenizer * tokenizer) { delete tokenizer; }

enum rwkv_status rwkv_tokenizer_encode(const struct rwkv_tokenizer * tokenizer, const uint8_t * text, size_t n_bytes,
                                       uint32_t * out_ids, size_t capacity, size_t * n_out) {
    if (tokenizer == nullptr || n_out == nullptr || (text == nullptr && n_bytes > 0) ||
        (out_ids == nullptr && capacity > 0)) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    *n_out = tokenizer->impl->encode(text, n_bytes, out_ids, capacity);
    return *n_out <= capacity ? RWKV_STATUS_OK : RWKV_STATUS_ERROR_INVALID_ARGUMENT;
}

}  // extern "C"
