// RWKV-6.0 graph.  Activations are [n_embed, T] (one column per token).
// Each block of ggml calls follows the official implementation
// (rwkv/model.py: att_seq_v6_0, ffn_seq_v6), quoted above it.
#include "rwkv_graph.h"

#include "rwkv_graph_common.h"
#include "rwkv_model.h"
#include "rwkv_ops.h"

#include "ggml.h"

namespace rwkv {

namespace {

// The five data-dependent token shifts (w, k, v, r, g) as [D, T, 5]:
//   xxx = xx + sx * time_maa_x
//   xxx = torch.tanh(xxx @ tm_w1).view(T, 5, -1).transpose(0, 1)
//   mw, mk, mv, mr, mg = torch.bmm(xxx, tm_w2).view(5, T, -1)
//   wx = xx + sx * (time_maa_w + mw), ...
ggml_tensor * data_dependent_mix(const GraphBuilder & b, const LayerV6 & l, int il, const Shifted & s) {
    ggml_context * ctx = b.ctx;
    const int64_t E = l.maa_w2->ne[0], T = b.n_tokens;
    ggml_tensor * xxx = b.name(shift_mix(ctx, s.xx, s.x_prev, b.io.seqs, &l.maa_x, 1, MixForm::AddDelta), "att_maa_x", il);
    ggml_tensor * h = b.matmul(l.maa_w1, xxx, "att_maa_w1", il);
    ggml_tensor * lora = b.name(ggml_tanh(ctx, h), "att_maa_tanh", il);  // [5E, T] = (T, 5, E)
    // (T, 5, E) -> (5, T, E), i.e. ggml [E, T, 5], the batch of the bmm
    ggml_tensor * batch;
    if (T == 1) {
        batch = b.name(ggml_reshape_3d(ctx, lora, E, 1, 5), "att_maa_batch", il);
    } else {
        ggml_tensor * split = b.name(ggml_reshape_3d(ctx, lora, E, 5, T), "att_maa_split", il);
        ggml_tensor * swapped = b.name(ggml_permute(ctx, split, 0, 2, 1, 3), "att_maa_swap", il);
        batch = b.name(ggml_cont(ctx, swapped), "att_maa_batch", il);
    }
    // maa_w2 stored (5, D, E): [D, T, 5]
    ggml_tensor * mwkvrg = b.name(ggml_mul_mat(ctx, l.maa_w2, batch), "att_maa_w2", il);
    return b.name(shift_mix_lora(ctx, s.xx, s.x_prev, b.io.seqs, mwkvrg, l.maa), "att_mix", il);
}

// The products of the mixed inputs [D, T, 5] (w, k, v, r, g blocks): r, k,
// v, g's product and tanh(wx @ td_w1), one packed_products node when every
// matrix is packed, else a node each.
void projections(const GraphBuilder & b, const LayerV6 & l, int il, ggml_tensor * mixed, ggml_tensor ** out) {
    ggml_tensor * const w[] = {l.att.r, l.att.k, l.att.v, l.att.g, l.decay_w1};
    static const int block[] = {3, 1, 2, 4, 0};
    static const char * const x_names[] = {"att_rx", "att_kx", "att_vx", "att_gx", "att_wx"};
    static const char * const names[] = {"att_r", "att_k", "att_v", "att_g", "att_decay_tanh"};
    static const PackedAct act[] = {PackedAct::NONE, PackedAct::NONE, PackedAct::NONE, PackedAct::NONE,
                                    PackedAct::TANH};
    ggml_tensor * x[5] = {};
    for (int i = 0; i < 5; ++i) x[i] = b.block(mixed, block[i], x_names[i], il);
    if (b.products_if_packed(w, x, act, 5, "att_proj", names, out, il)) return;
    for (int i = 0; i < 4; ++i) out[i] = b.matmul(w[i], x[i], names[i], il);
    out[4] = b.name(ggml_tanh(b.ctx, b.matmul(l.decay_w1, x[4], "att_decay_w1", il)), "att_decay_tanh", il);
}

// w = t_decay + tanh(wx @ td_w1) @ td_w2   (exp(-exp(w)) is taken in wkv5);
// a = tanh(wx @ td_w1)
ggml_tensor * decay_lora(const GraphBuilder & b, const LayerV6 & l, ggml_tensor * a, int il) {
    ggml_tensor * lora = b.matmul(l.decay_w2, a, "att_decay_lora", il);
    return b.name(ggml_add(b.ctx, lora, l.decay), "att_decay", il);
}

// Time mixing of layer il; returns x + att(x).
ggml_tensor * time_mixing(const GraphBuilder & b, const LayerV6 & l, int il, ggml_tensor * x) {
    const HParams & hp = b.hp;
    const Shifted s = b.norm_shift(x, {l.att.ln1_w, l.att.ln1_b}, b.model.wkv_state_offset(il, WKV_ATT_XX), "att", il);
    ggml_tensor * mixed = data_dependent_mix(b, l, il, s);  // wx, kx, vx, rx, gx
    // r = rx @ rw; k = kx @ kw; v = vx @ vw; g = F.silu(gx @ gw)
    ggml_tensor * p[5] = {};  // r, k, v, gx @ gw, tanh(wx @ td_w1)
    projections(b, l, il, mixed, p);
    ggml_tensor *r = p[0], *k = p[1], *v = p[2];
    ggml_tensor * g = b.name(ggml_silu(b.ctx, p[3]), "att_g_silu", il);
    ggml_tensor * w = decay_lora(b, l, p[4], il);
    // out = GroupNorm(r @ (u * k @ v + s)); s = k @ v + w * s
    const size_t s_off = b.model.wkv_state_offset(il, WKV_ATT_STATE);
    ggml_tensor * state = b.state_in(s_off, int64_t(hp.n_embed) * hp.head_size, "wkv_state", il);
    ggml_tensor * out =
        b.name(wkv5(b.ctx, hp.n_head, hp.head_size, &hp.ln_x_eps, r, k, v, w, true, l.bonus, l.att.lnx_w,
                    l.att.lnx_b, state, b.io.seqs),
               "wkv", il);
    ggml_tensor * y = b.wkv_output(out, s_off, il);
    // x + (out * g) @ ow
    ggml_tensor * gated = b.name(ggml_mul(b.ctx, y, g), "att_gated", il);
    return b.name(ggml_add(b.ctx, x, b.matmul(l.att.o, gated, "att_out", il)), "att_res", il);
}

}  // namespace

void build_graph_v6(GraphBuilder & b) {
    ggml_tensor * x = b.embed();
    for (uint32_t il = 0; il < b.hp.n_layer; ++il) {
        const LayerV6 & l = b.model.layers_v6[il];
        x = time_mixing(b, l, il, x);
        x = b.channel_mix_rkv(x, l.ffn, {l.att.ln2_w, l.att.ln2_b}, b.model.wkv_state_offset(il, WKV_FFN_XX),
                              MixForm::AddDelta, il);
    }
    b.output_logits(x);
}

}  // namespace rwkv
