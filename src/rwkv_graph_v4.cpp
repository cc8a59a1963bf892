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

using blocks::column_block;
using blocks::state_view;

// Time mixing (attention) of one layer; returns x + att(x).
ggml_tensor * time_mixing(ggml_context * ctx, ggml_cgraph * gf, const Model & m, uint32_t il, ggml_tensor * x,
                          GraphIO & io) {
    const LayerV4 & l = m.layers[il];
    const HParams & hp = m.hparams();
    const int64_t T = x->ne[1];
    // xx = F.layer_norm(x, ln1); sx = cat(state_xx, xx[:-1]);
    // kx, vx, rx = xx * time_mix_{k,v,r} + sx * (1 - time_mix_{k,v,r})   (one fused node)
    ggml_tensor * mixes[] = {l.att_mix_k, l.att_mix_v, l.att_mix_r};
    const size_t xx_off = m.v4_state_offset(il, V4_ATT_XX);
    ggml_tensor * kvr = ln_shift_mix(ctx, x, l.ln1_w, l.ln1_b, state_view(ctx, io.state_in, xx_off, hp.n_embed),
                                     state_view(ctx, io.state_out, xx_off, hp.n_embed), mixes, 3, &hp.ln_eps);
    // k = kx @ kw; v = vx @ vw; r = rx @ rw
    ggml_tensor * k = blocks::matmul(ctx, m, l.att_k, column_block(ctx, kvr, 0, T));
    ggml_tensor * v = blocks::matmul(ctx, m, l.att_v, column_block(ctx, kvr, 1, T));
    ggml_tensor * r = blocks::matmul(ctx, m, l.att_r, column_block(ctx, kvr, 2, T));
    // sigmoid(r) * wkv, and the new (aa, bb, pp): the max-exponent recurrence
    const size_t aa_off = m.v4_state_offset(il, V4_ATT_AA);
    ggml_tensor * rwkv = wkv4_gated(ctx, k, v, r, l.att_first, l.att_decay,
                                    state_view(ctx, io.state_in, aa_off, 3 * hp.n_att),
                                    state_view(ctx, io.state_out, aa_off, 3 * hp.n_att));
    // The fused nodes write the new state as a side effect: keep them in the
    // graph even where nothing consumes their output.
    ggml_build_forward_expand(gf, kvr);
    ggml_build_forward_expand(gf, rwkv);
    // x + (sigmoid(r) * wkv) @ ow
    return ggml_add(ctx, x, blocks::matmul(ctx, m, l.att_o, rwkv));
}

}  // namespace


void build_graph_v4(ggml_context * ctx, ggml_cgraph * gf, const Model & m, GraphIO & io, LogitsMode logits) {
    // x = emb[tokens]  (ln0 folded into emb at conversion, or applied here)
    ggml_tensor * x = blocks::embed(ctx, m, io);
    for (uint32_t il = 0; il < m.hparams().n_layer; ++il) {
        x = time_mixing(ctx, gf, m, il, x, io);
        const LayerV4 & l = m.layers[il];
        x = blocks::channel_mix_rkv(ctx, gf, m, x, l.ffn, l.ln2_w, l.ln2_b, io, m.v4_state_offset(il, V4_FFN_XX),
                                    MixForm::WeightedSum);
    }
    // F.layer_norm(x[-1], ..., ln_out) @ head   (every x for ALL)
    blocks::output_logits(ctx, gf, m, x, io, logits);
}

}  // namespace rwkv
