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
ggml_tensor * data_dependent_mix(ggml_context * ctx, const LayerV6 & l, const blocks::Shifted & s) {
    const int64_t E = l.maa_w2->ne[0], T = s.xx->ne[1];
    ggml_tensor * xxx = shift_mix(ctx, s.xx, s.x_prev, &l.maa_x, 1, MixForm::AddDelta);
    ggml_tensor * lora = ggml_tanh(ctx, ggml_mul_mat(ctx, l.maa_w1, xxx));  // [5E, T] = (T, 5, E)
    // (T, 5, E) -> (5, T, E), i.e. ggml [E, T, 5], the batch of the bmm
    ggml_tensor * batch = T == 1 ? ggml_reshape_3d(ctx, lora, E, 1, 5)
                                 : ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, lora, E, 5, T), 0, 2, 1, 3));
    ggml_tensor * mwkvrg = ggml_mul_mat(ctx, l.maa_w2, batch);  // maa_w2 stored (5, D, E): [D, T, 5]
    return shift_mix_lora(ctx, s.xx, s.x_prev, mwkvrg, l.maa);
}

// Time mixing of one layer; returns x + att(x).
ggml_tensor * time_mixing(ggml_context * ctx, ggml_cgraph * gf, const Model & m, uint32_t il, ggml_tensor * x,
                          GraphIO & io) {
    const LayerV6 & l = m.layers_v6[il];
    const HParams & hp = m.hparams();
    const int64_t T = x->ne[1];
    const blocks::Shifted s =
        blocks::norm_shift(ctx, gf, m, x, l.att.ln1_w, l.att.ln1_b, io, m.wkv_state_offset(il, WKV_ATT_XX));
    ggml_tensor * mixed = data_dependent_mix(ctx, l, s);  // wx, kx, vx, rx, gx
    // r = rx @ rw; k = kx @ kw; v = vx @ vw; g = F.silu(gx @ gw)
    ggml_tensor * r = blocks::matmul(ctx, m, l.att.r, blocks::block(ctx, mixed, 3));
    ggml_tensor * k = blocks::matmul(ctx, m, l.att.k, blocks::block(ctx, mixed, 1));
    ggml_tensor * v = blocks::matmul(ctx, m, l.att.v, blocks::block(ctx, mixed, 2));
    ggml_tensor * g = ggml_silu(ctx, blocks::matmul(ctx, m, l.att.g, blocks::block(ctx, mixed, 4)));
    // w = t_decay + tanh(wx @ td_w1) @ td_w2   (exp(-exp(w)) is taken in wkv5)
    ggml_tensor * w_lora =
        ggml_mul_mat(ctx, l.decay_w2, ggml_tanh(ctx, ggml_mul_mat(ctx, l.decay_w1, blocks::block(ctx, mixed, 0))));
    // out = GroupNorm(r @ (u * k @ v + s)); s = k @ v + w * s
    const size_t s_off = m.wkv_state_offset(il, WKV_ATT_STATE);
    ggml_tensor * state = blocks::state_view(ctx, io.state_in, s_off, int64_t(hp.n_embed) * hp.head_size);
    ggml_tensor * out = wkv5(ctx, hp.n_head, hp.head_size, &hp.ln_x_eps, r, k, v, l.decay, w_lora, l.bonus,
                             l.att.lnx_w, l.att.lnx_b, state);
    ggml_tensor * y = blocks::wkv_output(ctx, gf, out, T, io, s_off);
    // x + (out * g) @ ow
    return ggml_add(ctx, x, blocks::matmul(ctx, m, l.att.o, ggml_mul(ctx, y, g)));
}

}  // namespace

void build_graph_v6(ggml_context * ctx, ggml_cgraph * gf, const Model & m, GraphIO & io, LogitsMode logits) {
    ggml_tensor * x = blocks::embed(ctx, m, io);
    for (uint32_t il = 0; il < m.hparams().n_layer; ++il) {
        const LayerV6 & l = m.layers_v6[il];
        x = time_mixing(ctx, gf, m, il, x, io);
        x = blocks::channel_mix_rkv(ctx, gf, m, x, l.ffn, l.att.ln2_w, l.att.ln2_b, io,
                                    m.wkv_state_offset(il, WKV_FFN_XX), MixForm::AddDelta);
    }
    blocks::output_logits(ctx, gf, m, x, io, logits);
}

}  // namespace rwkv
