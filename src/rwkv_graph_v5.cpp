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

// r, k, v (and g where the version has the gate) of the mixed inputs
// [D, T, 3 or 4] (k, v, r, g blocks): one packed_products node when every
// matrix is packed, else a product node each.
void projections(const GraphBuilder & b, const LayerV5 & l, int il, ggml_tensor * mixed, ggml_tensor ** rkvg) {
    const int n = b.hp.has_gate ? 4 : 3;
    ggml_tensor * const w[] = {l.att.r, l.att.k, l.att.v, l.att.g};
    static const int block[] = {2, 0, 1, 3};
    static const char * const x_names[] = {"att_rx", "att_kx", "att_vx", "att_gx"};
    static const char * const names[] = {"att_r", "att_k", "att_v", "att_g"};
    ggml_tensor * x[4] = {};
    for (int i = 0; i < n; ++i) x[i] = b.block(mixed, block[i], x_names[i], il);
    if (!b.products_if_packed(w, x, nullptr, n, "att_proj", names, rkvg, il)) {
        for (int i = 0; i < n; ++i) rkvg[i] = b.matmul(w[i], x[i], names[i], il);
    }
}

// Time mixing of layer il; returns x + att(x).
ggml_tensor * time_mixing(const GraphBuilder & b, const LayerV5 & l, int il, ggml_tensor * x) {
    const HParams & hp = b.hp;
    const Shifted s = b.norm_shift(x, {l.att.ln1_w, l.att.ln1_b}, b.model.wkv_state_offset(il, WKV_ATT_XX), "att", il);
    // kx, vx, rx, gx = xx * time_mix_{k,v,r,g} + sx * (1 - time_mix_{k,v,r,g})
    ggml_tensor * const mu[] = {l.mix_k, l.mix_v, l.mix_r, l.mix_g};
    ggml_tensor * mixed =
        b.name(shift_mix(b.ctx, s.xx, s.x_prev, b.io.seqs, mu, hp.has_gate ? 4 : 3, MixForm::WeightedSum), "att_mix", il);
    // r = rx @ rw; k = kx @ kw; v = vx @ vw   (no sigmoid on r from v5 on)
    ggml_tensor * rkvg[4] = {};
    projections(b, l, il, mixed, rkvg);
    ggml_tensor *r = rkvg[0], *k = rkvg[1], *v = rkvg[2];
    // out = GroupNorm(r @ (u * k @ v + s)); s = k @ v + w * s
    const size_t s_off = b.model.wkv_state_offset(il, WKV_ATT_STATE);
    ggml_tensor * state = b.state_in(s_off, int64_t(hp.n_embed) * hp.head_size, "wkv_state", il);
    ggml_tensor * out =
        b.name(wkv5(b.ctx, hp.n_head, hp.head_size, &hp.ln_x_eps, r, k, v, l.decay, false, l.bonus, l.att.lnx_w,
                    l.att.lnx_b, state, b.io.seqs),
               "wkv", il);
    ggml_tensor * y = b.wkv_output(out, s_off, il);
    if (hp.has_gate) {
        // out = out * F.silu(gx @ gw)
        y = b.name(ggml_mul(b.ctx, y, b.name(ggml_silu(b.ctx, rkvg[3]), "att_g_silu", il)), "att_gated", il);
    }
    // x + out @ ow
    return b.name(ggml_add(b.ctx, x, b.matmul(l.att.o, y, "att_out", il)), "att_res", il);
}

}  // namespace

void build_graph_v5(GraphBuilder & b) {
    ggml_tensor * x = b.embed();
    for (uint32_t il = 0; il < b.hp.n_layer; ++il) {
        const LayerV5 & l = b.model.layers_v5[il];
        x = time_mixing(b, l, il, x);
        x = b.channel_mix_rkv(x, l.ffn, {l.att.ln2_w, l.att.ln2_b}, b.model.wkv_state_offset(il, WKV_FFN_XX),
                              MixForm::WeightedSum, il);
    }
    b.output_logits(x);
}

}  // namespace rwkv
