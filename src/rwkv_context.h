// Context layer: per-thread evaluation of a model.  Owns the CPU backend, a
// persistent thread pool and a small cache of graphs keyed by shape (built
// once, re-run for every call of that shape).  Every evaluation is a batch
// of sequences (one sequence is a batch of one), so a sequence evaluated
// alone and in a batch goes through the same graphs and kernels.
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
struct Pass;

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

    // Evaluates n_seq independent sequences; see rwkv_eval_batch.
    void eval_batch(const rwkv_batch_seq * seqs, size_t n_seq, size_t n_state, bool all_logits);

    // Graphs built so far (a cache miss each), for tests of the shape bound.
    uint64_t graphs_built() const { return graphs_built_; }

    const Model & model() const { return model_; }

private:
    CachedGraph & graph_for(uint32_t n_tokens, uint32_t n_seqs, LogitsMode logits);
    void check_seq(const rwkv_batch_seq & seq, size_t index, size_t n_seq, bool all_logits) const;
    std::vector<Pass> plan(const rwkv_batch_seq * seqs, size_t n_seq) const;
    CachedGraph & run_pass(const Pass & pass, const rwkv_batch_seq * seqs, bool all_logits, bool last_pass);
    void set_inputs(CachedGraph & g, const Pass & pass, const rwkv_batch_seq * seqs) const;
    void read_logits(const CachedGraph & g, const Pass & pass, const rwkv_batch_seq * seqs) const;

    const Model & model_;
    uint32_t n_threads_;
    uint32_t chunk_;
    ggml_backend * backend_ = nullptr;
    ggml_threadpool * threadpool_ = nullptr;
    std::vector<std::unique_ptr<CachedGraph>> graphs_;
    uint64_t use_counter_ = 0;
    uint64_t graphs_built_ = 0;
    std::vector<float> init_state_;
    // States of sequences between passes (and of those finished before the
    // last pass), carry_slot_[seq] rows of state_len floats.
    std::vector<float> carry_;
    std::vector<size_t> carry_slot_;
};

}  // namespace rwkv
