// The graph builder shared by every RWKV version (llama.cpp's
// llm_graph_context in small): it carries what every block needs (the ggml
// context and graph, the model, its hyper-parameters, the graph's inputs and
// outputs) and names every node it creates "what.layer" ("att_norm.3",
// "wkv.3", ...) or "what" outside the layers, so that a dump of the graph can
// be read.  Its blocks are the ggml form of one line of the official PyTorch
// code each (quoted above them).
#pragma once

#include "rwkv_graph.h"
#include "rwkv_packed.h"

#include <cstddef>
#include <cstdint>
#include <string>

struct ggml_context;
struct ggml_cgraph;
struct ggml_tensor;

namespace rwkv {

class Model;
struct FfnRKV;
struct HParams;
enum class MixForm;

// The weight and bias of a layer norm.
struct NormWeights {
    ggml_tensor * w;
    ggml_tensor * b;
};

// The input of a token-shift block: xx = F.layer_norm(x, ...) and the
// state's x_prev of that block.
struct Shifted {
    ggml_tensor * xx;
    ggml_tensor * x_prev;
};

class GraphBuilder {
public:
    GraphBuilder(ggml_context * ctx, ggml_cgraph * gf, const Model & model, GraphIO & io, LogitsMode logits);

    // The layer index of nodes outside the layers (embedding, head).
    static constexpr int NO_LAYER = -1;

    ggml_context * const ctx;
    ggml_cgraph * const gf;
    const Model & model;
    const HParams & hp;
    GraphIO & io;
    const LogitsMode logits;
    const int64_t n_tokens;  // T: activations are [n_embed, T], one column per token
    const int64_t n_seqs;    // S: sequence slots, each with its own state (io.seqs says which columns)

    // Names t "what.il" ("what" for NO_LAYER) and returns it.
    ggml_tensor * name(ggml_tensor * t, const std::string & what, int il) const;

    // Adds t to the graph even where nothing consumes it: the fused nodes
    // that write their part of the new state as a side effect.
    void keep(ggml_tensor * t) const;

    // x @ w.T for a matrix w [out, in] (ggml [in, out]) and x [in, T]: the
    // packed kernel when the model packed w (rwkv_packed.h), else ggml's.
    ggml_tensor * matmul(ggml_tensor * w, ggml_tensor * x, const std::string & what, int il) const;

    // One packed_products node "node.il" (rwkv_packed.h) of the n products
    // p, so that one barrier follows all of them; out[i] gets product i's
    // block, named "what[i].il", and its input nodes are named as matmul
    // names them.  Every p[i].w must be a packed matrix.
    void products_node(const PackedProduct * p, int n, const char * node, const char * const * what,
                       ggml_tensor ** out, int il) const;

    // products_node for act[i](w[i] @ x[i]) (act null: none) when the model
    // packed every w[i], and true; else it builds nothing and returns false,
    // and the caller builds a node per product.
    bool products_if_packed(ggml_tensor * const * w, ggml_tensor * const * x, const PackedAct * act, int n,
                            const char * node, const char * const * what, ggml_tensor ** out, int il) const;

    // F.layer_norm(x, (D,), weight=ln.w, bias=ln.b, eps), per column of x [D, T]
    ggml_tensor * layer_norm(ggml_tensor * x, NormWeights ln, const std::string & what, int il) const;

    // The state slot [offset, offset + n) of the input state ("slot_in") and
    // of the output state ("slot_out") of every sequence: [n, S] views
    // (row s: sequence s), the per-sequence state inputs of the ops.
    ggml_tensor * state_in(size_t offset, int64_t n, const std::string & slot, int il) const;
    ggml_tensor * state_out(size_t offset, int64_t n, const std::string & slot, int il) const;

    // state_out[s][offset : offset + n] = src[s] for src [n, S] (contiguous),
    // as a graph output ("slot_store").
    void store(ggml_tensor * src, size_t offset, const std::string & slot, int il) const;

    // Column block m (T columns) of a [D, n*T] tensor (the fused ln_shift_mix output).
    ggml_tensor * column_block(ggml_tensor * t, int64_t m, const std::string & what, int il) const;

    // Block i ([D, T]) of a [D, T, n] tensor.
    ggml_tensor * block(ggml_tensor * t, int64_t i, const std::string & what, int il) const;

    // x = emb[tokens]; the official loaders fold ln0 into emb (our converter
    // does too); files that keep ln0 (rwkv.cpp imports) apply it here.
    ggml_tensor * embed() const;

    // The last column of each sequence of x [D, T]: [D, S] ("what").
    ggml_tensor * last_columns(ggml_tensor * x, const std::string & what, int il) const;

    // x = F.layer_norm(x[-1] (or every x), ..., ln_out) @ head -> io.logits
    // (x[-1]: each sequence's last column).
    void output_logits(ggml_tensor * x) const;

    // xx = F.layer_norm(x, ..., ln); x_prev = state_in[offset : offset + D];
    // stores each sequence's xx[-1] at state_out[offset] (the next call's
    // x_prev).  part:
    // "att" or "ffn", the prefix of the nodes' names.
    Shifted norm_shift(ggml_tensor * x, NormWeights ln, size_t offset, const std::string & part, int il) const;

    // Splits a [D, T + N * S] WKV result (wkv5, wkv7): stores the new state
    // of each sequence (N columns each from column T) at state_out[offset]
    // and returns the output columns [D, T].
    ggml_tensor * wkv_output(ggml_tensor * out, size_t offset, int il) const;

    // Channel mixing with receptance (RWKV-4/5 ffn_one, RWKV-6 ffn_one_v6):
    //   kx, rx = mix(xx, sx, k), mix(xx, sx, r)      (form: v5 or v6 mix)
    //   x + sigmoid(rx @ rw) * (relu(kx @ kw) ** 2 @ vw)
    ggml_tensor * channel_mix_rkv(ggml_tensor * x, const FfnRKV & f, NormWeights ln2, size_t offset, MixForm form,
                                  int il) const;
};

}  // namespace rwkv
