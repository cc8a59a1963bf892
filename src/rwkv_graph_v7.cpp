// RWKV-7.0 graph.  Activations are [n_embed, T] (one column per token).
// Each block of ggml calls follows the official implementation
// (rwkv/model.py: RWKV_x070_TMix_seq / RWKV_x070_CMix_seq), quoted above it.
#include "rwkv_graph.h"

#include "rwkv_graph_common.h"
#include "rwkv_model.h"
#include "rwkv_ops.h"

#include "ggml.h"

namespace rwkv {

namespace {

// (x @ w1) @ w2, with an activation between: the LoRAs of RWKV-7 (w1, w2
// stored as (out, in) matrices).
ggml_tensor * lora(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w1, ggml_tensor * w2,
                   ggml_tensor * (*activation)(ggml_context *, ggml_tensor *)) {
    ggml_tensor * h = ggml_mul_mat(ctx, w1, x);
    return ggml_mul_mat(ctx, w2, activation != nullptr ? activation(ctx, h) : h);
}

// Time mixing of one layer; returns x + att(x).  v_first is the value of
// layer 0 (set there, read by the later layers).
ggml_tensor * time_mixing(ggml_context * ctx, ggml_cgraph * gf, const Model & m, uint32_t il, ggml_tensor * x,
                          GraphIO & io, ggml_tensor ** v_first) {
    const LayerV7 & l = m.layers_v7[il];
    const HParams & hp = m.hparams();
    const int64_t T = x->ne[1];
    const blocks::Shifted s =
        blocks::norm_shift(ctx, gf, m, x, l.att.ln1_w, l.att.ln1_b, io, m.wkv_state_offset(il, WKV_ATT_XX));
    // xr, xw, xk, xv, xa, xg = x + xx * x_r, ...  (xx = cat(x_prev, x[:-1]) - x)
    ggml_tensor * mixed = shift_mix(ctx, s.xx, s.x_prev, l.x, V7_MIXES, MixForm::AddDelta);
    ggml_tensor * xv = blocks::block(ctx, mixed, V7_MIX_V);
    // r = xr @ R_; k = xk @ K_; v = xv @ V_
    ggml_tensor * r = blocks::matmul(ctx, m, l.att.r, blocks::block(ctx, mixed, V7_MIX_R));
    ggml_tensor * k = blocks::matmul(ctx, m, l.att.k, blocks::block(ctx, mixed, V7_MIX_K));
    ggml_tensor * v = blocks::matmul(ctx, m, l.att.v, xv);
    // w = tanh(xw @ w1) @ w2;  a = (xa @ a1) @ a2  (w0, a0, sigmoid: in the ops)
    ggml_tensor * w_lora = lora(ctx, blocks::block(ctx, mixed, V7_MIX_W), l.w1, l.w2, ggml_tanh);
    ggml_tensor * a_lora = lora(ctx, blocks::block(ctx, mixed, V7_MIX_A), l.a1, l.a2, nullptr);
    // g = sigmoid(xg @ g1) @ g2
    ggml_tensor * g = lora(ctx, blocks::block(ctx, mixed, V7_MIX_G), l.g1, l.g2, ggml_sigmoid);
    // kk, k, v (with the value residual of layers > 0) and a
    ggml_tensor * prep = il == 0 ? wkv7_prepare(ctx, hp.n_head, hp.head_size, k, v, a_lora, l.a0, l.k_k, l.k_a,
                                                nullptr, nullptr, nullptr)
                                 : wkv7_prepare(ctx, hp.n_head, hp.head_size, k, v, a_lora, l.a0, l.k_k, l.k_a,
                                                lora(ctx, xv, l.v1, l.v2, nullptr), l.v0, *v_first);
    if (il == 0) {
        *v_first = blocks::block(ctx, prep, WKV7_V);
    }
    const size_t s_off = m.wkv_state_offset(il, WKV_ATT_STATE);
    ggml_tensor * state = blocks::state_view(ctx, io.state_in, s_off, int64_t(hp.n_embed) * hp.head_size);
    ggml_tensor * out = wkv7(ctx, hp.n_head, hp.head_size, &hp.ln_x_eps, r, w_lora, l.w0, prep, l.r_k, l.att.lnx_w,
                             l.att.lnx_b, state);
    ggml_tensor * y = blocks::wkv_output(ctx, gf, out, T, io, s_off);
    // x + (xx * g) @ O_
    return ggml_add(ctx, x, blocks::matmul(ctx, m, l.att.o, ggml_mul(ctx, y, g)));
}

// Channel mixing of one layer; returns x + ffn(x):
//   k = x + xx * x_k;  k = torch.relu(k @ K_) ** 2;  x + k @ V_
ggml_tensor * channel_mixing(ggml_context * ctx, ggml_cgraph * gf, const Model & m, uint32_t il, ggml_tensor * x,
                             GraphIO & io) {
    const LayerV7 & l = m.layers_v7[il];
    const blocks::Shifted s =
        blocks::norm_shift(ctx, gf, m, x, l.att.ln2_w, l.att.ln2_b, io, m.wkv_state_offset(il, WKV_FFN_XX));
    ggml_tensor * kx = shift_mix(ctx, s.xx, s.x_prev, &l.ffn_x_k, 1, MixForm::AddDelta);
    ggml_tensor * k = relu_sq(ctx, blocks::matmul(ctx, m, l.ffn_k, kx));
    return ggml_add(ctx, x, blocks::matmul(ctx, m, l.ffn_v, k));
}

}  // namespace

void build_graph_v7(ggml_context * ctx, ggml_cgraph * gf, const Model & m, GraphIO & io, LogitsMode logits) {
    ggml_tensor * x = blocks::embed(ctx, m, io);
    ggml_tensor * v_first = nullptr;
    for (uint32_t il = 0; il < m.hparams().n_layer; ++il) {
        x = time_mixing(ctx, gf, m, il, x, io, &v_first);
        x = channel_mixing(ctx, gf, m, il, x, io);
    }
    blocks::output_logits(ctx, gf, m, x, io, logits);
}

}  // namespace rwkv
