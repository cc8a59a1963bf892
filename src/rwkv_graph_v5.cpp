// RWKV-5.0/5.1/5.2 graph.  Activations are [n_embed, T] (one column per
// token).  Each block of ggml calls follows the official implementation
// (rwkv/model.py: att_one_v5 / att_one_v5_1, ffn_one), quoted above it.
// 5.1 and 5.2 differ only in the shape of the decay and the bonus, which the
// converter stores per channel for both; 5.0 has no gate.
#include "rwkv_graph.h"

#include "rwkv_graph_common.h"
#include "rwkv_model.h"
#include "rwkv_ops.h"

#include "ggml.h"

namespace rwkv {

namespace {

// Time mixing of one layer; returns x + att(x).
ggml_tensor * time_mixing(ggml_context * ctx, ggml_cgraph * gf, const Model & m, uint32_t il, ggml_tensor * x,
                          GraphIO & io) {
    const LayerV5 & l = m.layers_v5[il];
    const HParams & hp = m.hparams();
    const int64_t T = x->ne[1];
    const blocks::Shifted s =
        blocks::norm_shift(ctx, gf, m, x, l.att.ln1_w, l.att.ln1_b, io, m.wkv_state_offset(il, WKV_ATT_XX));
    // kx, vx, rx, gx = xx * time_mix_{k,v,r,g} + sx * (1 - time_mix_{k,v,r,g})
    ggml_tensor * const mu[] = {l.mix_k, l.mix_v, l.mix_r, l.mix_g};
    ggml_tensor * mixed = shift_mix(ctx, s.xx, s.x_prev, mu, hp.has_gate ? 4 : 3, MixForm::WeightedSum);
    // r = rx @ rw; k = kx @ kw; v = vx @ vw   (no sigmoid on r from v5 on)
    ggml_tensor * r = blocks::matmul(ctx, m, l.att.r, blocks::block(ctx, mixed, 2));
    ggml_tensor * k = blocks::matmul(ctx, m, l.att.k, blocks::block(ctx, mixed, 0));
    ggml_tensor * v = blocks::matmul(ctx, m, l.att.v, blocks::block(ctx, mixed, 1));
    // out = GroupNorm(r @ (u * k @ v + s)); s = k @ v + w * s
    const size_t s_off = m.wkv_state_offset(il, WKV_ATT_STATE);
    ggml_tensor * state = blocks::state_view(ctx, io.state_in, s_off, int64_t(hp.n_embed) * hp.head_size);
    ggml_tensor * out = wkv5(ctx, hp.n_head, hp.head_size, &hp.ln_x_eps, r, k, v, l.decay, nullptr, l.bonus,
                             l.att.lnx_w, l.att.lnx_b, state);
    ggml_tensor * y = blocks::wkv_output(ctx, gf, out, T, io, s_off);
    if (hp.has_gate) {
        // out = out * F.silu(gx @ gw)
        y = ggml_mul(ctx, y, ggml_silu(ctx, blocks::matmul(ctx, m, l.att.g, blocks::block(ctx, mixed, 3))));
    }
    // x + out @ ow
    return ggml_add(ctx, x, blocks::matmul(ctx, m, l.att.o, y));
}

}  // namespace

void build_graph_v5(ggml_context * ctx, ggml_cgraph * gf, const Model & m, GraphIO & io, LogitsMode logits) {
    ggml_tensor * x = blocks::embed(ctx, m, io);
    for (uint32_t il = 0; il < m.hparams().n_layer; ++il) {
        const LayerV5 & l = m.layers_v5[il];
        x = time_mixing(ctx, gf, m, il, x, io);
        x = blocks::channel_mix_rkv(ctx, gf, m, x, l.ffn, l.att.ln2_w, l.att.ln2_b, io,
                                    m.wkv_state_offset(il, WKV_FFN_XX), MixForm::WeightedSum);
    }
    blocks::output_logits(ctx, gf, m, x, io, logits);
}

}  // namespace rwkv
