// Graph builders: one per RWKV version, each parameterised by the number of
// tokens, so single-token decode and sequence prefill share one code path.
#pragma once

#include <cstddef>
#include <cstdint>

struct ggml_context;
struct ggml_cgraph;
struct ggml_tensor;

namespace rwkv {

class GraphBuilder;
class Model;

// Inputs and outputs of an evaluation graph.  tokens, state_in and state_out
// are created (and allocated) by the caller; the builder sets logits.
struct GraphIO {
    ggml_tensor * tokens = nullptr;     // i32 [T]
    ggml_tensor * state_in = nullptr;   // f32 [state_len]
    ggml_tensor * state_out = nullptr;  // f32 [state_len], written by the graph
    ggml_tensor * logits = nullptr;     // f32 [n_vocab, 1] (LAST) or [n_vocab, T] (ALL); null for NONE
};

// Which logits a graph computes.
enum class LogitsMode { NONE, LAST, ALL };

// Upper bound of graph nodes for a model, for sizing the graph.
size_t graph_max_nodes(const Model & model);

// The graph of each version, over the builder of rwkv_graph_common.h.
void build_graph_v4(GraphBuilder & b);
void build_graph_v5(GraphBuilder & b);
void build_graph_v6(GraphBuilder & b);
void build_graph_v7(GraphBuilder & b);

// The graph of the model's version (rwkv_graph.cpp): the one entry point of
// the context layer.  io.tokens, io.state_in and io.state_out must exist
// (io.tokens gives the number of tokens); every node is named.
void build_graph(ggml_context * ctx, ggml_cgraph * gf, const Model & model, GraphIO & io, LogitsMode logits);

}  // namespace rwkv
