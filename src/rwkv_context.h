// Context layer: per-thread evaluation of a model.  Owns the CPU backend, a
// persistent thread pool and a small cache of graphs keyed by shape (built
// once, re-run for every call of that shape).
#pragma once

#include "rwkv_common.h"
#include "rwkv_graph.h"

#include <cstdint>
#include <memory>
#include <vector>

struct ggml_backend;
struct ggml_threadpool;

namespace rwkv {

class Model;
struct CachedGraph;

class Context {
public:
    Context(const Model & model, const rwkv_context_params & params);
    ~Context();
    Context(const Context &) = delete;
    Context & operator=(const Context &) = delete;

    // Evaluates tokens[0..n) in order (any n >= 1); see rwkv_eval_sequence.
    // all_logits: logits_out receives n_tokens * n_vocab floats.
    void eval(const uint32_t * tokens, size_t n_tokens, const float * state_in, float * state_out, size_t n_state,
              float * logits_out, size_t n_logits, bool all_logits);

    const Model & model() const { return model_; }

private:
    CachedGraph & graph_for(uint32_t n_tokens, LogitsMode logits);
    void run_chunk(CachedGraph & g, const uint32_t * tokens, const float * state_in);
    void check_args(const uint32_t * tokens, size_t n_tokens, const float * state_out, size_t n_state,
                    const float * logits_out, size_t n_logits, size_t n_logits_expected) const;

    const Model & model_;
    uint32_t n_threads_;
    uint32_t chunk_;
    ggml_backend * backend_ = nullptr;
    ggml_threadpool * threadpool_ = nullptr;
    std::vector<std::unique_ptr<CachedGraph>> graphs_;
    uint64_t use_counter_ = 0;
    std::vector<float> init_state_;
    std::vector<float> carry_;  // state between chunks
};

}  // namespace rwkv
