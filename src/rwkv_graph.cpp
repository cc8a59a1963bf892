// Dispatch of graph building on the model's architecture (read from the
// file's metadata by the loader, never guessed here).
#include "rwkv_graph.h"

#include "rwkv_graph_common.h"
#include "rwkv_model.h"

#include "ggml.h"

namespace rwkv {

namespace {

// Graph nodes per layer, an upper bound per architecture (measured: v4 13
// with the fused ops, v5.0 40, v5.2 44, v6 55, v7 50), with a margin.
size_t nodes_per_layer(Arch arch) {
    switch (arch) {
        case Arch::V4: return 32;
        case Arch::V5: return 64;
        case Arch::V6: return 80;
        case Arch::V7: return 80;
    }
    return 96;
}

constexpr size_t NODES_EXTRA = 64;  // embedding, ln0, head

}  // namespace

size_t graph_max_nodes(const Model & model) {
    return nodes_per_layer(model.hparams().arch) * model.hparams().n_layer + NODES_EXTRA;
}

GraphIO new_graph_io(ggml_context * ctx, const Model & model, uint32_t n_tokens, uint32_t n_seqs) {
    const int64_t n_state = static_cast<int64_t>(model.state_len());
    GraphIO io;
    io.tokens = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
    io.seqs = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, int64_t(n_seqs) + 1);
    io.last = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_seqs);
    io.state_in = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_state, n_seqs);
    io.state_out = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_state, n_seqs);
    return io;
}

void build_graph(ggml_context * ctx, ggml_cgraph * gf, const Model & model, GraphIO & io, LogitsMode logits) {
    GraphBuilder b(ctx, gf, model, io, logits);
    switch (model.hparams().arch) {
        case Arch::V4: build_graph_v4(b); return;
        case Arch::V5: build_graph_v5(b); return;
        case Arch::V6: build_graph_v6(b); return;
        case Arch::V7: build_graph_v7(b); return;
    }
    fail(RWKV_STATUS_ERROR_UNSUPPORTED, "no graph builder for this architecture");
}

}  // namespace rwkv
