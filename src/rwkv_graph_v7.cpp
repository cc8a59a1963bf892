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
// stored as (out, in) matrices).  Nodes "what_h", "what_act", "what".
ggml_tensor * lora(const GraphBuilder & b, ggml_tensor * x, ggml_tensor * w1, ggml_tensor * w2,
                   ggml_tensor * (*activation)(ggml_context *, ggml_tensor *), const std::string & what, int il) {
    ggml_tensor * h = b.name(ggml_mul_mat(b.ctx, w1, x), what + "_h", il);
    if (activation != nullptr) {
        h = b.name(activation(b.ctx, h), what + "_act", il);
    }
    return b.name(ggml_mul_mat(b.ctx, w2, h), what, il);
}

// Time mixing of layer il; returns x + att(x).  v_first is the value of
// layer 0 (set there, read by the later layers).
ggml_tensor * time_mixing(const GraphBuilder & b, const LayerV7 & l, int il, ggml_tensor * x,
                          ggml_tensor ** v_first) {
    const HParams & hp = b.hp;
    const Shifted s = b.norm_shift(x, {l.att.ln1_w, l.att.ln1_b}, b.model.wkv_state_offset(il, WKV_ATT_XX), "att", il);
    // xr, xw, xk, xv, xa, xg = x + xx * x_r, ...  (xx = cat(x_prev, x[:-1]) - x)
    ggml_tensor * mixed = b.name(shift_mix(b.ctx, s.xx, s.x_prev, b.io.seqs, l.x, V7_MIXES, MixForm::AddDelta), "att_mix", il);
    ggml_tensor * xv = b.block(mixed, V7_MIX_V, "att_vx", il);
    // r = xr @ R_; k = xk @ K_; v = xv @ V_
    ggml_tensor * r = b.matmul(l.att.r, b.block(mixed, V7_MIX_R, "att_rx", il), "att_r", il);
    ggml_tensor * k = b.matmul(l.att.k, b.block(mixed, V7_MIX_K, "att_kx", il), "att_k", il);
    ggml_tensor * v = b.matmul(l.att.v, xv, "att_v", il);
    // w = tanh(xw @ w1) @ w2;  a = (xa @ a1) @ a2  (w0, a0, sigmoid: in the ops)
    ggml_tensor * w_lora = lora(b, b.block(mixed, V7_MIX_W, "att_wx", il), l.w1, l.w2, ggml_tanh, "att_w_lora", il);
    ggml_tensor * a_lora = lora(b, b.block(mixed, V7_MIX_A, "att_ax", il), l.a1, l.a2, nullptr, "att_a_lora", il);
    // g = sigmoid(xg @ g1) @ g2
    ggml_tensor * g = lora(b, b.block(mixed, V7_MIX_G, "att_gx", il), l.g1, l.g2, ggml_sigmoid, "att_g", il);
    // kk, k, v (with the value residual of layers > 0) and a
    ggml_tensor * prep = il == 0 ? wkv7_prepare(b.ctx, hp.n_head, hp.head_size, k, v, a_lora, l.a0, l.k_k, l.k_a,
                                                nullptr, nullptr, nullptr)
                                 : wkv7_prepare(b.ctx, hp.n_head, hp.head_size, k, v, a_lora, l.a0, l.k_k, l.k_a,
                                                lora(b, xv, l.v1, l.v2, nullptr, "att_v_lora", il), l.v0, *v_first);
    b.name(prep, "wkv_prep", il);
    if (il == 0) {
        *v_first = b.block(prep, WKV7_V, "v_first", il);
    }
    const size_t s_off = b.model.wkv_state_offset(il, WKV_ATT_STATE);
    ggml_tensor * state = b.state_in(s_off, int64_t(hp.n_embed) * hp.head_size, "wkv_state", il);
    ggml_tensor * out = b.name(wkv7(b.ctx, hp.n_head, hp.head_size, &hp.ln_x_eps, r, w_lora, l.w0, prep, l.r_k,
                                    l.att.lnx_w, l.att.lnx_b, state, b.io.seqs),
                               "wkv", il);
    ggml_tensor * y = b.wkv_output(out, s_off, il);
    // x + (xx * g) @ O_
    ggml_tensor * gated = b.name(ggml_mul(b.ctx, y, g), "att_gated", il);
    return b.name(ggml_add(b.ctx, x, b.matmul(l.att.o, gated, "att_out", il)), "att_res", il);
}

// Channel mixing of layer il; returns x + ffn(x):
//   k = x + xx * x_k;  k = torch.relu(k @ K_) ** 2;  x + k @ V_
ggml_tensor * channel_mixing(const GraphBuilder & b, const LayerV7 & l, int il, ggml_tensor * x) {
    const Shifted s = b.norm_shift(x, {l.att.ln2_w, l.att.ln2_b}, b.model.wkv_state_offset(il, WKV_FFN_XX), "ffn", il);
    ggml_tensor * kx = b.name(shift_mix(b.ctx, s.xx, s.x_prev, b.io.seqs, &l.ffn_x_k, 1, MixForm::AddDelta), "ffn_kx", il);
    ggml_tensor * k = b.name(relu_sq(b.ctx, b.matmul(l.ffn_k, kx, "ffn_k", il)), "ffn_k_sq", il);
    return b.name(ggml_add(b.ctx, x, b.matmul(l.ffn_v, k, "ffn_v", il)), "ffn_res", il);
}

}  // namespace

void build_graph_v7(GraphBuilder & b) {
    ggml_tensor * x = b.embed();
    ggml_tensor * v_first = nullptr;
    for (uint32_t il = 0; il < b.hp.n_layer; ++il) {
        const LayerV7 & l = b.model.layers_v7[il];
        x = time_mixing(b, l, il, x, &v_first);
        x = channel_mixing(b, l, il, x);
    }
    b.output_logits(x);
}

}  // namespace rwkv
