#include "rwkv_context.h"

#include "rwkv_model.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>

namespace rwkv {

namespace {

constexpr uint32_t DEFAULT_CHUNK_TOKENS = 128;
constexpr uint32_t MAX_CHUNK_TOKENS = 4096;
constexpr size_t MAX_CACHED_GRAPHS = 4;

}  // namespace

// One built and allocated graph for a (n_tokens, logits mode) shape.  The
// inputs and the output state live in their own buffer so that the graph
// allocator never reuses them.
struct CachedGraph {
    uint32_t n_tokens = 0;
    LogitsMode logits = LogitsMode::NONE;
    uint64_t last_used = 0;
    ggml_context * io_ctx = nullptr;
    ggml_backend_buffer_t io_buf = nullptr;
    ggml_context * ctx = nullptr;
    ggml_cgraph * gf = nullptr;
    ggml_gallocr_t alloc = nullptr;
    GraphIO io;

    ~CachedGraph() {
        if (alloc != nullptr) ggml_gallocr_free(alloc);
        if (ctx != nullptr) ggml_free(ctx);
        if (io_buf != nullptr) ggml_backend_buffer_free(io_buf);
        if (io_ctx != nullptr) ggml_free(io_ctx);
    }
};

Context::Context(const Model & model, const rwkv_context_params & params) : model_(model) {
    n_threads_ = params.n_threads;
    if (n_threads_ == 0) {
        n_threads_ = std::max(1u, std::thread::hardware_concurrency());
    }
    if (n_threads_ > GGML_MAX_N_THREADS) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "n_threads = %u exceeds the maximum of %d", n_threads_,
             GGML_MAX_N_THREADS);
    }
    chunk_ = params.max_chunk_tokens == 0 ? DEFAULT_CHUNK_TOKENS : params.max_chunk_tokens;
    if (chunk_ > MAX_CHUNK_TOKENS) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "max_chunk_tokens = %u exceeds the maximum of %u", chunk_,
             MAX_CHUNK_TOKENS);
    }
    backend_ = ggml_backend_cpu_init();
    if (backend_ == nullptr) {
        fail(RWKV_STATUS_ERROR_ALLOC, "cannot initialise the ggml CPU backend");
    }
    ggml_threadpool_params tpp = ggml_threadpool_params_default(static_cast<int>(n_threads_));
    threadpool_ = ggml_threadpool_new(&tpp);
    if (threadpool_ == nullptr) {
        ggml_backend_free(backend_);
        fail(RWKV_STATUS_ERROR_ALLOC, "cannot create a thread pool of %u threads", n_threads_);
    }
    ggml_backend_cpu_set_n_threads(backend_, static_cast<int>(n_threads_));
    ggml_backend_cpu_set_threadpool(backend_, threadpool_);
    init_state_.resize(model_.state_len());
    carry_.resize(model_.state_len());
    model_.init_state(init_state_.data());
}

Context::~Context() {
    graphs_.clear();
    if (backend_ != nullptr) ggml_backend_free(backend_);
    if (threadpool_ != nullptr) ggml_threadpool_free(threadpool_);
}

CachedGraph & Context::graph_for(uint32_t n_tokens, LogitsMode logits) {
    ++use_counter_;
    for (auto & g : graphs_) {
        if (g->n_tokens == n_tokens && g->logits == logits) {
            g->last_used = use_counter_;
            return *g;
        }
    }
    if (graphs_.size() >= MAX_CACHED_GRAPHS) {
        auto lru = std::min_element(graphs_.begin(), graphs_.end(),
                                    [](const auto & a, const auto & b) { return a->last_used < b->last_used; });
        graphs_.erase(lru);
    }
    auto g = std::make_unique<CachedGraph>();
    g->n_tokens = n_tokens;
    g->logits = logits;
    g->last_used = use_counter_;

    // Inputs and state output: a small context with its own buffer.
    ggml_init_params io_params = {4 * ggml_tensor_overhead(), nullptr, /*no_alloc =*/ true};
    g->io_ctx = ggml_init(io_params);
    const int64_t n_state = static_cast<int64_t>(model_.state_len());
    g->io.tokens = ggml_new_tensor_1d(g->io_ctx, GGML_TYPE_I32, n_tokens);
    g->io.state_in = ggml_new_tensor_1d(g->io_ctx, GGML_TYPE_F32, n_state);
    g->io.state_out = ggml_new_tensor_1d(g->io_ctx, GGML_TYPE_F32, n_state);
    g->io_buf = ggml_backend_alloc_ctx_tensors(g->io_ctx, backend_);
    if (g->io_buf == nullptr) {
        fail(RWKV_STATUS_ERROR_ALLOC, "cannot allocate graph inputs");
    }

    const size_t max_nodes = graph_max_nodes(model_);
    ggml_init_params params = {ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false),
                               nullptr, /*no_alloc =*/ true};
    g->ctx = ggml_init(params);
    g->gf = ggml_new_graph_custom(g->ctx, max_nodes, false);
    build_graph(g->ctx, g->gf, model_, g->io, logits);

    g->alloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backend_));
    if (!ggml_gallocr_alloc_graph(g->alloc, g->gf)) {
        fail(RWKV_STATUS_ERROR_ALLOC, "cannot allocate the compute graph for %u tokens", n_tokens);
    }
    model_.logger().log(RWKV_LOG_LEVEL_DEBUG, "built graph: %u tokens, %d nodes", n_tokens, ggml_graph_n_nodes(g->gf));
    graphs_.push_back(std::move(g));
    return *graphs_.back();
}

void Context::run_chunk(CachedGraph & g, const uint32_t * tokens, const float * state_in) {
    static_assert(sizeof(int32_t) == sizeof(uint32_t), "token ids are copied as int32");
    std::memcpy(g.io.tokens->data, tokens, g.n_tokens * sizeof(uint32_t));
    if (state_in != g.io.state_in->data) {
        std::memcpy(g.io.state_in->data, state_in, ggml_nbytes(g.io.state_in));
    }
    const ggml_status st = ggml_backend_graph_compute(backend_, g.gf);
    if (st != GGML_STATUS_SUCCESS) {
        fail(RWKV_STATUS_ERROR_COMPUTE, "graph computation failed (ggml status %d)", static_cast<int>(st));
    }
}

void Context::check_args(const uint32_t * tokens, size_t n_tokens, const float * state_out, size_t n_state,
                         const float * logits_out, size_t n_logits, size_t n_logits_expected) const {
    if (tokens == nullptr || n_tokens == 0) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "no tokens given (n_tokens must be >= 1)");
    }
    if (state_out == nullptr) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "state_out is NULL");
    }
    if (n_state != model_.state_len()) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "state buffer has %zu floats, the model needs %zu", n_state,
             model_.state_len());
    }
    if (logits_out != nullptr && n_logits != n_logits_expected) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "logits buffer has %zu floats, the call needs %zu", n_logits,
             n_logits_expected);
    }
    const uint32_t n_vocab = model_.hparams().n_vocab;
    for (size_t i = 0; i < n_tokens; ++i) {
        if (tokens[i] >= n_vocab) {
            fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "token %u at position %zu is out of range (n_vocab = %u)",
                 tokens[i], i, n_vocab);
        }
    }
}

void Context::eval(const uint32_t * tokens, size_t n_tokens, const float * state_in, float * state_out,
                   size_t n_state, float * logits_out, size_t n_logits, bool all_logits) {
    const size_t n_vocab = model_.hparams().n_vocab;
    if (all_logits && n_tokens > SIZE_MAX / n_vocab) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "n_tokens * n_vocab overflows");
    }
    check_args(tokens, n_tokens, state_out, n_state, logits_out, n_logits, all_logits ? n_tokens * n_vocab : n_vocab);
    const float * cur = state_in != nullptr ? state_in : init_state_.data();
    size_t done = 0;
    CachedGraph * g = nullptr;
    while (done < n_tokens) {
        const uint32_t n = static_cast<uint32_t>(std::min<size_t>(chunk_, n_tokens - done));
        const bool last = done + n == n_tokens;
        LogitsMode mode = LogitsMode::NONE;
        if (logits_out != nullptr) {
            mode = all_logits ? LogitsMode::ALL : (last ? LogitsMode::LAST : LogitsMode::NONE);
        }
        g = &graph_for(n, mode);
        run_chunk(*g, tokens + done, cur);
        if (mode == LogitsMode::ALL) {
            std::memcpy(logits_out + done * n_vocab, g->io.logits->data, n * n_vocab * sizeof(float));
        } else if (mode == LogitsMode::LAST) {
            std::memcpy(logits_out, g->io.logits->data, n_vocab * sizeof(float));
        }
        done += n;
        if (done < n_tokens) {
            // Carry the state through a buffer of ours: the next chunk's
            // graph may evict this one from the cache.
            std::memcpy(carry_.data(), g->io.state_out->data, n_state * sizeof(float));
            cur = carry_.data();
        }
    }
    std::memcpy(state_out, g->io.state_out->data, n_state * sizeof(float));
}

}  // namespace rwkv
