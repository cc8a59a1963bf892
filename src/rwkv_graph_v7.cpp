// RWKV-7.0 graph.  Activations are [n_embed, T] (one column per token).
// Each block of ggml calls follows the official implementation
// (rwkv/model.py: RWKV_x070_TMix_seq / RWKV_x070_CMix_seq), quoted above it.
#include "rwkv_graph.h"

#include "rwkv_graph_common.h"
#include "rwkv_model.h"
#include "rwkv_ops.h"
#include "rwkv_packed.h"

#include "ggml.h"

namespace rwkv {

namespace {

// (x @ w1) @ w2, with an activation between: the LoRAs of RWKV-7 (w1, w2
// stored as (out, in) matrices).  Nodes "what_h", "what_act", "what".
ggml_tensor * lora(const GraphBuilder & b, ggml_tensor * x, ggml_tensor * w1, ggml_tensor * w2,
                   ggml_tensor * (*activation)(ggml_context *, ggml_tensor *), const std::string & what, int il) {
    ggml_tensor * h = b.matmul(w1, x, what + "_h", il);
    if (activation != nullptr) {
        h = b.name(activation(b.ctx, h), what + "_act", il);
    }
    return b.matmul(w2, h, what, il);
}

// The products of the time mixing that read only the mixed inputs: r, k, v
// and the LoRAs' outputs (v_lora: null at layer 0, which has none).
struct Projections {
    ggml_tensor *r, *k, *v, *w_lora, *a_lora, *g, *v_lora;
};

// The mixed inputs of the projections, [D, T] each.
struct Mixed {
    ggml_tensor *r, *w, *k, *v, *a, *g;
};

// Every matrix of the projections packed: two nodes, the seven products
// of the mixed inputs (activations included), then the four LoRA up
// projections of their hidden activations.
Projections fused_projections(const GraphBuilder & b, const LayerV7 & l, int il, const Mixed & x) {
    const Model & m = b.model;
    const int n = il == 0 ? 6 : 7;  // layer 0 has no value LoRA
    const PackedProduct down[] = {{m.packed(l.att.r), x.r, PackedAct::NONE},  {m.packed(l.att.k), x.k, PackedAct::NONE},
                                  {m.packed(l.att.v), x.v, PackedAct::NONE},  {m.packed(l.w1), x.w, PackedAct::TANH},
                                  {m.packed(l.a1), x.a, PackedAct::NONE},     {m.packed(l.g1), x.g, PackedAct::SIGMOID},
                                  {m.packed(l.v1), x.v, PackedAct::NONE}};
    static const char * const down_names[] = {"att_r", "att_k", "att_v", "att_w_lora_act", "att_a_lora_h",
                                              "att_g_act", "att_v_lora_h"};
    ggml_tensor * h[7] = {};
    b.products_node(down, n, "att_proj", down_names, h, il);
    const PackedProduct up[] = {{m.packed(l.w2), h[3], PackedAct::NONE}, {m.packed(l.a2), h[4], PackedAct::NONE},
                                {m.packed(l.g2), h[5], PackedAct::NONE}, {m.packed(l.v2), h[6], PackedAct::NONE}};
    static const char * const up_names[] = {"att_w_lora", "att_a_lora", "att_g", "att_v_lora"};
    ggml_tensor * lo[4] = {};
    b.products_node(up, n - 3, "att_lora", up_names, lo, il);
    return {h[0], h[1], h[2], lo[0], lo[1], lo[2], lo[3]};
}

// The same products one node each, through ggml where a matrix is not packed.
Projections single_projections(const GraphBuilder & b, const LayerV7 & l, int il, const Mixed & x) {
    Projections p{};
    // r = xr @ R_; k = xk @ K_; v = xv @ V_
    p.r = b.matmul(l.att.r, x.r, "att_r", il);
    p.k = b.matmul(l.att.k, x.k, "att_k", il);
    p.v = b.matmul(l.att.v, x.v, "att_v", il);
    // w = tanh(xw @ w1) @ w2;  a = (xa @ a1) @ a2  (w0, a0, sigmoid: in the ops)
    p.w_lora = lora(b, x.w, l.w1, l.w2, ggml_tanh, "att_w_lora", il);
    p.a_lora = lora(b, x.a, l.a1, l.a2, nullptr, "att_a_lora", il);
    // g = sigmoid(xg @ g1) @ g2
    p.g = lora(b, x.g, l.g1, l.g2, ggml_sigmoid, "att_g", il);
    // v_lora = (xv @ v1) @ v2  (the value residual of layers > 0)
    p.v_lora = il == 0 ? nullptr : lora(b, x.v, l.v1, l.v2, nullptr, "att_v_lora", il);
    return p;
}

Projections projections(const GraphBuilder & b, const LayerV7 & l, int il, const Mixed & x) {
    const Model & m = b.model;
    bool packed = true;
    for (ggml_tensor * w : {l.att.r, l.att.k, l.att.v, l.w1, l.w2, l.a1, l.a2, l.g1, l.g2}) {
        packed = packed && m.packed(w) != nullptr;
    }
    if (il > 0) {
        packed = packed && m.packed(l.v1) != nullptr && m.packed(l.v2) != nullptr;
    }
    return packed ? fused_projections(b, l, il, x) : single_projections(b, l, il, x);
}

// Time mixing of layer il; returns x + att(x).  v_first is the value of
// layer 0 (set there, read by the later layers).
ggml_tensor * time_mixing(const GraphBuilder & b, const LayerV7 & l, int il, ggml_tensor * x,
                          ggml_tensor ** v_first) {
    const HParams & hp = b.hp;
    const Shifted s = b.norm_shift(x, {l.att.ln1_w, l.att.ln1_b}, b.model.wkv_state_offset(il, WKV_ATT_XX), "att", il);
    // xr, xw, xk, xv, xa, xg = x + xx * x_r, ...  (xx = cat(x_prev, x[:-1]) - x)
    ggml_tensor * mixed = b.name(shift_mix(b.ctx, s.xx, s.x_prev, b.io.seqs, l.x, V7_MIXES, MixForm::AddDelta), "att_mix", il);
    const Mixed mx = {b.block(mixed, V7_MIX_R, "att_rx", il), b.block(mixed, V7_MIX_W, "att_wx", il),
                      b.block(mixed, V7_MIX_K, "att_kx", il), b.block(mixed, V7_MIX_V, "att_vx", il),
                      b.block(mixed, V7_MIX_A, "att_ax", il), b.block(mixed, V7_MIX_G, "att_gx", il)};
    const Projections p = projections(b, l, il, mx);
    // kk, k, v (with the value residual of layers > 0: v_lora, v0 and
    // v_first are null at layer 0) and a
    ggml_tensor * prep = wkv7_prepare(b.ctx, hp.n_head, hp.head_size, p.k, p.v, p.a_lora, l.a0, l.k_k, l.k_a,
                                      p.v_lora, il == 0 ? nullptr : l.v0, *v_first);
    b.name(prep, "wkv_prep", il);
    if (il == 0) {
        *v_first = b.block(prep, WKV7_V, "v_first", il);
    }
    const size_t s_off = b.model.wkv_state_offset(il, WKV_ATT_STATE);
    ggml_tensor * state = b.state_in(s_off, int64_t(hp.n_embed) * hp.head_size, "wkv_state", il);
    ggml_tensor * out = b.name(wkv7(b.ctx, hp.n_head, hp.head_size, &hp.ln_x_eps, p.r, p.w_lora, l.w0, prep, l.r_k,
                                    l.att.lnx_w, l.att.lnx_b, state, b.io.seqs),
                               "wkv", il);
    ggml_tensor * y = b.wkv_output(out, s_off, il);
    // x + (xx * g) @ O_
    ggml_tensor * gated = b.name(ggml_mul(b.ctx, y, p.g), "att_gated", il);
    return b.name(ggml_add(b.ctx, x, b.matmul(l.att.o, gated, "att_out", il)), "att_res", il);
}

// Channel mixing of layer il; returns x + ffn(x):
//   k = x + xx * x_k;  k = torch.relu(k @ K_) ** 2;  x + k @ V_
ggml_tensor * channel_mixing(const GraphBuilder & b, const LayerV7 & l, int il, ggml_tensor * x) {
    const Shifted s = b.norm_shift(x, {l.att.ln2_w, l.att.ln2_b}, b.model.wkv_state_offset(il, WKV_FFN_XX), "ffn", il);
    ggml_tensor * kx = b.name(shift_mix(b.ctx, s.xx, s.x_prev, b.io.seqs, &l.ffn_x_k, 1, MixForm::AddDelta), "ffn_kx", il);
    ggml_tensor * k = nullptr;
    static const PackedAct square[] = {PackedAct::RELU_SQ};  // the square in the product's node
    static const char * const k_name[] = {"ffn_k_sq"};
    if (!b.products_if_packed(&l.ffn_k, &kx, square, 1, "ffn_k", k_name, &k, il)) {
        k = b.name(relu_sq(b.ctx, b.matmul(l.ffn_k, kx, "ffn_k", il)), "ffn_k_sq", il);
    }
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
