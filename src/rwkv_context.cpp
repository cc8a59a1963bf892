#include "rwkv_context.h"

#include "rwkv_model.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

namespace rwkv {

namespace {

constexpr uint32_t DEFAULT_CHUNK_TOKENS = 128;
constexpr uint32_t MAX_CHUNK_TOKENS = 4096;
// Graphs kept per context: a batch call needs at most two shapes (full
// passes and the last one); the rest serve the mixes a server alternates.
constexpr size_t MAX_CACHED_GRAPHS = 16;
// Token buckets (rwkv_eval_batch): powers of two up to EXACT_BUCKETS, then
// BUCKET_STEPS steps per octave.
constexpr uint32_t EXACT_BUCKETS = 16;
constexpr uint32_t BUCKET_STEPS = 8;
constexpr size_t NO_SLOT = SIZE_MAX;

uint32_t pow2_ceil(uint32_t x) {
    uint32_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

// The graph's columns for a pass of x tokens, at most cap: few distinct
// shapes, under 1/4 of the columns wasted above EXACT_BUCKETS.
uint32_t token_bucket(uint32_t x, uint32_t cap) {
    uint32_t b = pow2_ceil(x);
    if (x > EXACT_BUCKETS) {
        const uint32_t step = b / BUCKET_STEPS;
        b = (x + step - 1) / step * step;
    }
    return std::min(b, cap);
}

}  // namespace

// One built and allocated graph for a (tokens, sequences, logits mode)
// shape.  The inputs and the output state live in their own buffer so that
// the graph allocator never reuses them.
struct CachedGraph {
    uint32_t n_tokens = 0;
    uint32_t n_seqs = 0;
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

    float * state_in(size_t slot) const { return static_cast<float *>(io.state_in->data) + slot * io.state_in->ne[0]; }
    const float * state_out(size_t slot) const {
        return static_cast<const float *>(io.state_out->data) + slot * io.state_out->ne[0];
    }
};

// Tokens [begin, begin + n) of sequence seq, evaluated in one pass.
struct Part {
    size_t seq;
    size_t begin;
    uint32_t n;
};

// One graph computation: the parts of the sequences it evaluates, in order
// (part i is sequence slot i of the graph).
struct Pass {
    std::vector<Part> parts;
    uint32_t n_tokens = 0;
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
    model_.init_state(init_state_.data());
}

Context::~Context() {
    graphs_.clear();
    if (backend_ != nullptr) ggml_backend_free(backend_);
    if (threadpool_ != nullptr) ggml_threadpool_free(threadpool_);
}

CachedGraph & Context::graph_for(uint32_t n_tokens, uint32_t n_seqs, LogitsMode logits) {
    ++use_counter_;
    for (auto & g : graphs_) {
        if (g->n_tokens == n_tokens && g->n_seqs == n_seqs && g->logits == logits) {
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
    g->n_seqs = n_seqs;
    g->logits = logits;
    g->last_used = use_counter_;

    // Inputs and state output: a small context with its own buffer.
    ggml_init_params io_params = {GRAPH_IO_TENSORS * ggml_tensor_overhead(), nullptr, /*no_alloc =*/ true};
    g->io_ctx = ggml_init(io_params);
    g->io = new_graph_io(g->io_ctx, model_, n_tokens, n_seqs);
    g->io_buf = ggml_backend_alloc_ctx_tensors(g->io_ctx, backend_);
    if (g->io_buf == nullptr) {
        fail(RWKV_STATUS_ERROR_ALLOC, "cannot allocate graph inputs for %u sequences", n_seqs);
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
    model_.logger().log(RWKV_LOG_LEVEL_DEBUG, "built graph: %u tokens, %u sequences, %d nodes", n_tokens, n_seqs,
                        ggml_graph_n_nodes(g->gf));
    ++graphs_built_;
    graphs_.push_back(std::move(g));
    return *graphs_.back();
}

void Context::check_seq(const rwkv_batch_seq & seq, size_t index, size_t n_seq, bool all_logits) const {
    const std::string where = n_seq > 1 ? format("sequence %zu: ", index) : std::string();
    if (seq.tokens == nullptr || seq.n_tokens == 0) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "%sno tokens given (n_tokens must be >= 1)", where.c_str());
    }
    if (seq.state_out == nullptr) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "%sstate_out is NULL", where.c_str());
    }
    const size_t n_vocab = model_.hparams().n_vocab;
    if (all_logits && seq.n_tokens > SIZE_MAX / n_vocab) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "%sn_tokens * n_vocab overflows", where.c_str());
    }
    const size_t n_logits = all_logits ? seq.n_tokens * n_vocab : n_vocab;
    if (seq.logits_out != nullptr && seq.n_logits != n_logits) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "%slogits buffer has %zu floats, the call needs %zu", where.c_str(),
             seq.n_logits, n_logits);
    }
    for (size_t i = 0; i < seq.n_tokens; ++i) {
        if (seq.tokens[i] >= n_vocab) {
            fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "%stoken %u at position %zu is out of range (n_vocab = %zu)",
                 where.c_str(), seq.tokens[i], i, n_vocab);
        }
    }
}

// Fills passes of at most chunk_ tokens with the sequences in order; a
// sequence that does not fit continues in the next pass.
std::vector<Pass> Context::plan(const rwkv_batch_seq * seqs, size_t n_seq) const {
    std::vector<Pass> passes(1);
    for (size_t s = 0; s < n_seq; ++s) {
        for (size_t done = 0; done < seqs[s].n_tokens;) {
            if (passes.back().n_tokens == chunk_) {
                passes.emplace_back();
            }
            Pass & p = passes.back();
            const uint32_t n = static_cast<uint32_t>(std::min<size_t>(seqs[s].n_tokens - done, chunk_ - p.n_tokens));
            p.parts.push_back({s, done, n});
            p.n_tokens += n;
            done += n;
        }
    }
    return passes;
}

// The graph inputs of a pass: its tokens back to back (padding: token 0),
// the offsets of its parts (empty slots at the end), each part's last
// column and its state (the caller's, the initial one or the carried one).
void Context::set_inputs(CachedGraph & g, const Pass & pass, const rwkv_batch_seq * seqs) const {
    auto * tokens = static_cast<int32_t *>(g.io.tokens->data);
    auto * offsets = static_cast<int32_t *>(g.io.seqs->data);
    auto * last = static_cast<int32_t *>(g.io.last->data);
    const size_t n_state = model_.state_len();
    int32_t at = 0;
    for (size_t i = 0; i < g.n_seqs; ++i) {
        offsets[i] = at;
        if (i >= pass.parts.size()) {
            last[i] = 0;
            continue;
        }
        const Part & part = pass.parts[i];
        const rwkv_batch_seq & seq = seqs[part.seq];
        static_assert(sizeof(int32_t) == sizeof(uint32_t), "token ids are copied as int32");
        std::memcpy(tokens + at, seq.tokens + part.begin, part.n * sizeof(uint32_t));
        at += static_cast<int32_t>(part.n);
        last[i] = at - 1;
        const float * state = part.begin > 0 ? carry_.data() + carry_slot_[part.seq] * n_state
                              : seq.state_in != nullptr ? seq.state_in
                                                        : init_state_.data();
        std::memcpy(g.state_in(i), state, n_state * sizeof(float));
    }
    offsets[g.n_seqs] = at;
    std::fill(tokens + at, tokens + g.n_tokens, 0);
}

// Copies the logits of a pass out: every token's (ALL) or the last token's
// of each sequence that ends in it (LAST), for the sequences that want them.
void Context::read_logits(const CachedGraph & g, const Pass & pass, const rwkv_batch_seq * seqs) const {
    const size_t n_vocab = model_.hparams().n_vocab;
    const float * logits = static_cast<const float *>(g.io.logits->data);
    size_t column = 0;
    for (size_t i = 0; i < pass.parts.size(); ++i) {
        const Part & part = pass.parts[i];
        const rwkv_batch_seq & seq = seqs[part.seq];
        if (seq.logits_out != nullptr) {
            if (g.logits == LogitsMode::ALL) {
                std::memcpy(seq.logits_out + part.begin * n_vocab, logits + column * n_vocab,
                            part.n * n_vocab * sizeof(float));
            } else if (part.begin + part.n == seq.n_tokens) {
                std::memcpy(seq.logits_out, logits + i * n_vocab, n_vocab * sizeof(float));
            }
        }
        column += part.n;
    }
}

CachedGraph & Context::run_pass(const Pass & pass, const rwkv_batch_seq * seqs, bool all_logits, bool last_pass) {
    LogitsMode mode = LogitsMode::NONE;
    for (const Part & part : pass.parts) {
        const rwkv_batch_seq & seq = seqs[part.seq];
        if (seq.logits_out != nullptr && (all_logits || part.begin + part.n == seq.n_tokens)) {
            mode = all_logits ? LogitsMode::ALL : LogitsMode::LAST;
        }
    }
    // Sequence slots: the next power of two (an unused slot costs only its
    // state copies), at most one per column.
    const uint32_t n_tokens = token_bucket(pass.n_tokens, chunk_);
    const uint32_t n_slots = std::min(pow2_ceil(static_cast<uint32_t>(pass.parts.size())), n_tokens);
    CachedGraph & g = graph_for(n_tokens, n_slots, mode);
    set_inputs(g, pass, seqs);
    const ggml_status st = ggml_backend_graph_compute(backend_, g.gf);
    if (st != GGML_STATUS_SUCCESS) {
        fail(RWKV_STATUS_ERROR_COMPUTE, "graph computation failed (ggml status %d)", static_cast<int>(st));
    }
    if (mode != LogitsMode::NONE) {
        read_logits(g, pass, seqs);
    }
    if (!last_pass) {
        // Carry the states through buffers of ours: the next pass's graph
        // may evict this one from the cache.
        const size_t n_state = model_.state_len();
        for (size_t i = 0; i < pass.parts.size(); ++i) {
            std::memcpy(carry_.data() + carry_slot_[pass.parts[i].seq] * n_state, g.state_out(i),
                        n_state * sizeof(float));
        }
    }
    return g;
}

void Context::eval_batch(const rwkv_batch_seq * seqs, size_t n_seq, size_t n_state, bool all_logits) {
    if (seqs == nullptr || n_seq == 0) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "no sequences given (n_seq must be >= 1)");
    }
    if (n_state != model_.state_len()) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "state buffer has %zu floats, the model needs %zu", n_state,
             model_.state_len());
    }
    for (size_t i = 0; i < n_seq; ++i) {
        check_seq(seqs[i], i, n_seq, all_logits);
    }
    const std::vector<Pass> passes = plan(seqs, n_seq);
    // A carry slot for every sequence evaluated before the last pass.
    carry_slot_.assign(n_seq, NO_SLOT);
    size_t n_carry = 0;
    for (size_t p = 0; p + 1 < passes.size(); ++p) {
        for (const Part & part : passes[p].parts) {
            if (carry_slot_[part.seq] == NO_SLOT) carry_slot_[part.seq] = n_carry++;
        }
    }
    carry_.resize(n_carry * n_state);
    CachedGraph * g = nullptr;
    for (size_t p = 0; p < passes.size(); ++p) {
        g = &run_pass(passes[p], seqs, all_logits, p + 1 == passes.size());
    }
    // Every sequence is done: only now write the callers' states.
    std::vector<const float *> final_state(n_seq, nullptr);
    for (size_t i = 0; i < passes.back().parts.size(); ++i) {
        final_state[passes.back().parts[i].seq] = g->state_out(i);
    }
    for (size_t s = 0; s < n_seq; ++s) {
        const float * src = final_state[s] != nullptr ? final_state[s] : carry_.data() + carry_slot_[s] * n_state;
        std::memcpy(seqs[s].state_out, src, n_state * sizeof(float));
    }
}

void Context::eval(const uint32_t * tokens, size_t n_tokens, const float * state_in, float * state_out,
                   size_t n_state, float * logits_out, size_t n_logits, bool all_logits) {
    const rwkv_batch_seq seq = {tokens, n_tokens, state_in, state_out, logits_out, n_logits};
    eval_batch(&seq, 1, n_state, all_logits);
}

}  // namespace rwkv
