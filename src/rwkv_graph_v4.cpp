// RWKV-4 graph.  Activations are [n_embed, T] (one column per token).  Each
// block of ggml calls is preceded by the equivalent PyTorch expression of the
// official implementation (rwkv/model.py, att_seq / ffn_seq).
#include "rwkv_graph.h"
#include "rwkv_graph_common.h"

#include "rwkv_model.h"
#include "rwkv_ops.h"

#include "ggml.h"

namespace rwkv {

namespace {

// Time mixing (attention) of layer il; returns x + att(x).
ggml_tensor * time_mixing(const GraphBuilder & b, const LayerV4 & l, int il, ggml_tensor * x) {
    const Model & m = b.model;
    const int64_t D = b.hp.n_embed, A = b.hp.n_att;
    // xx = F.layer_norm(x, ln1); sx = cat(state_xx, xx[:-1]);
    // kx, vx, rx = xx * time_mix_{k,v,r} + sx * (1 - time_mix_{k,v,r})   (one fused node)
    ggml_tensor * mixes[] = {l.att_mix_k, l.att_mix_v, l.att_mix_r};
    const size_t xx_off = m.v4_state_offset(il, V4_ATT_XX);
    ggml_tensor * kvr = b.name(ln_shift_mix(b.ctx, x, l.ln1_w, l.ln1_b, b.state_in(xx_off, D, "att_shift", il),
                                            b.state_out(xx_off, D, "att_shift", il), b.io.seqs, mixes, 3,
                                            &b.hp.ln_eps),
                               "att_mix", il);
    // k = kx @ kw; v = vx @ vw; r = rx @ rw
    ggml_tensor * k = b.matmul(l.att_k, b.column_block(kvr, 0, "att_kx", il), "att_k", il);
    ggml_tensor * v = b.matmul(l.att_v, b.column_block(kvr, 1, "att_vx", il), "att_v", il);
    ggml_tensor * r = b.matmul(l.att_r, b.column_block(kvr, 2, "att_rx", il), "att_r", il);
    // sigmoid(r) * wkv, and the new (aa, bb, pp): the max-exponent recurrence
    const size_t aa_off = m.v4_state_offset(il, V4_ATT_AA);
    ggml_tensor * rwkv = b.name(wkv4_gated(b.ctx, k, v, r, l.att_first, l.att_decay,
                                           b.state_in(aa_off, 3 * A, "wkv_state", il),
                                           b.state_out(aa_off, 3 * A, "wkv_state", il), b.io.seqs),
                                "wkv", il);
    // The fused nodes write the new state as a side effect: keep them in the
    // graph even where nothing consumes their output.
    b.keep(kvr);
    b.keep(rwkv);
    // x + (sigmoid(r) * wkv) @ ow
    return b.name(ggml_add(b.ctx, x, b.matmul(l.att_o, rwkv, "att_out", il)), "att_res", il);
}

}  // namespace

void build_graph_v4(GraphBuilder & b) {
    // x = emb[tokens]  (ln0 folded into emb at conversion, or applied here)
    ggml_tensor * x = b.embed();
    for (uint32_t il = 0; il < b.hp.n_layer; ++il) {
        const LayerV4 & l = b.model.layers[il];
        x = time_mixing(b, l, il, x);
        x = b.channel_mix_rkv(x, l.ffn, {l.ln2_w, l.ln2_b}, b.model.v4_state_offset(il, V4_FFN_XX),
                              MixForm::WeightedSum, il);
    }
    // F.layer_norm(x[-1], ..., ln_out) @ head   (every x for ALL)
    b.output_logits(x);
}

}  // namespace rwkv
