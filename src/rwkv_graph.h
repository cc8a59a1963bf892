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

// Inputs and outputs of an evaluation graph of T token columns and S
// sequence slots (a batch; S = 1 for one sequence).  Sequence s is the
// columns [seqs[s], seqs[s+1]) (empty for an unused slot); the columns from
// seqs[S] to T are padding.  Everything but logits is created by
// new_graph_io and allocated by the caller; the builder sets logits.  The
// offsets are read at compute time, so one graph serves every mix of
// lengths that fits its (T, S).
struct GraphIO {
    ggml_tensor * tokens = nullptr;     // i32 [T] (padding: any valid id)
    ggml_tensor * seqs = nullptr;       // i32 [S + 1], the offsets (rwkv_ops.h)
    ggml_tensor * last = nullptr;       // i32 [S]: the last column of each sequence (any column for an empty slot)
    ggml_tensor * state_in = nullptr;   // f32 [state_len, S]
    ggml_tensor * state_out = nullptr;  // f32 [state_len, S], written by the graph
    ggml_tensor * logits = nullptr;     // f32 [n_vocab, S] (LAST) or [n_vocab, T] (ALL); null for NONE
};

// The number of tensors new_graph_io creates.
constexpr size_t GRAPH_IO_TENSORS = 5;

// Creates the inputs and outputs of a graph of n_tokens columns and n_seqs
// slots in ctx (tensors only, not allocated).
GraphIO new_graph_io(ggml_context * ctx, const Model & model, uint32_t n_tokens, uint32_t n_seqs);

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
// (io.tokens gives the number of tokens, io.last the number of slots); every
// node is named.
void build_graph(ggml_context * ctx, ggml_cgraph * gf, const Model & model, GraphIO & io, LogitsMode logits);

}  // namespace rwkv
