// RWKV-4 graph.  Activations are [n_embed, T] (one column per token).  Each
// block of ggml calls is preceded by the equivalent PyTorch expression of the
// official implementation (rwkv/model.py, att_seq / ffn_seq).
#include "rwkv_graph.h"

#include "rwkv_model.h"
#include "rwkv_ops.h"

#include "ggml.h"

namespace rwkv {

namespace {

constexpr size_t NODES_PER_LAYER = 64;
constexpr size_t NODES_EXTRA = 64;

// F.layer_norm(x, (D,), weight=w, bias=b)
ggml_tensor * layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b, float eps) {
    return ggml_add(ctx, ggml_mul(ctx, ggml_norm(ctx, x, eps), w), b);
}

// A slice of the state vector as a 1-D view.
ggml_tensor * state_view(ggml_context * ctx, ggml_tensor * state, size_t offset, int64_t n) {
    return ggml_view_1d(ctx, state, n, offset * sizeof(float));
}

// sx = torch.cat((sx.unsqueeze(0), xx[:-1,:])): the previous token of each
// column; the first column takes the state's x_prev.
ggml_tensor * token_shift(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev) {
    const int64_t D = xx->ne[0], T = xx->ne[1];
    ggml_tensor * first = ggml_reshape_2d(ctx, x_prev, D, 1);
    if (T == 1) {
        return first;
    }
    ggml_tensor * rest = ggml_view_2d(ctx, xx, D, T - 1, xx->nb[1], 0);
    return ggml_concat(ctx, first, rest, 1);
}

// xx * mix + sx * (1 - mix), computed as sx + (xx - sx) * mix (diff = xx - sx)
ggml_tensor * mix(ggml_context * ctx, ggml_tensor * sx, ggml_tensor * diff, ggml_tensor * mu) {
    return ggml_add(ctx, sx, ggml_mul(ctx, diff, mu));
}

// Column T-1 of a [D, T] tensor.
ggml_tensor * last_column(ggml_context * ctx, ggml_tensor * x) {
    return ggml_view_1d(ctx, x, x->ne[0], (x->ne[1] - 1) * x->nb[1]);
}

void store(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * src, ggml_tensor * state_out, size_t offset) {
    ggml_build_forward_expand(gf, ggml_cpy(ctx, src, state_view(ctx, state_out, offset, ggml_nelements(src))));
}

// Time mixing (attention) of one layer; returns x + att(x).
ggml_tensor * time_mixing(ggml_context * ctx, ggml_cgraph * gf, const Model & m, uint32_t il, ggml_tensor * x,
                          GraphIO & io) {
    const LayerV4 & l = m.layers[il];
    const HParams & hp = m.hparams();
    // xx = F.layer_norm(x, ..., ln1); sx = cat(state_xx, xx[:-1])
    ggml_tensor * xx = layer_norm(ctx, x, l.ln1_w, l.ln1_b, hp.ln_eps);
    ggml_tensor * sx = token_shift(ctx, xx, state_view(ctx, io.state_in, m.v4_state_offset(il, V4_ATT_XX), hp.n_embed));
    ggml_tensor * diff = ggml_sub(ctx, xx, sx);
    // kx, vx, rx = xx * time_mix_{k,v,r} + sx * (1 - time_mix_{k,v,r})
    ggml_tensor * kx = mix(ctx, sx, diff, l.att_mix_k);
    ggml_tensor * vx = mix(ctx, sx, diff, l.att_mix_v);
    ggml_tensor * rx = mix(ctx, sx, diff, l.att_mix_r);
    // r = sigmoid(rx @ rw); k = kx @ kw; v = vx @ vw
    ggml_tensor * r = ggml_sigmoid(ctx, ggml_mul_mat(ctx, l.att_r, rx));
    ggml_tensor * k = ggml_mul_mat(ctx, l.att_k, kx);
    ggml_tensor * v = ggml_mul_mat(ctx, l.att_v, vx);
    // wkv and the new (aa, bb, pp): the max-exponent recurrence (rwkv_ops)
    ggml_tensor * aa_bb_pp = state_view(ctx, io.state_in, m.v4_state_offset(il, V4_ATT_AA), 3 * hp.n_att);
    ggml_tensor * wkv_all = wkv4(ctx, k, v, l.att_first, l.att_decay, aa_bb_pp);
    const int64_t A = hp.n_att, T = x->ne[1];
    ggml_tensor * wkv = ggml_view_2d(ctx, wkv_all, A, T, wkv_all->nb[1], 0);
    ggml_tensor * new_state = ggml_view_1d(ctx, wkv_all, 3 * A, T * wkv_all->nb[1]);
    store(ctx, gf, new_state, io.state_out, m.v4_state_offset(il, V4_ATT_AA));
    store(ctx, gf, last_column(ctx, xx), io.state_out, m.v4_state_offset(il, V4_ATT_XX));
    // x + (r * wkv) @ ow
    return ggml_add(ctx, x, ggml_mul_mat(ctx, l.att_o, ggml_mul(ctx, r, wkv)));
}

// Channel mixing (FFN) of one layer; returns x + ffn(x).
ggml_tensor * channel_mixing(ggml_context * ctx, ggml_cgraph * gf, const Model & m, uint32_t il, ggml_tensor * x,
                             GraphIO & io) {
    const LayerV4 & l = m.layers[il];
    const HParams & hp = m.hparams();
    // xx = F.layer_norm(x, ..., ln2); sx = cat(state_xx, xx[:-1])
    ggml_tensor * xx = layer_norm(ctx, x, l.ln2_w, l.ln2_b, hp.ln_eps);
    ggml_tensor * sx = token_shift(ctx, xx, state_view(ctx, io.state_in, m.v4_state_offset(il, V4_FFN_XX), hp.n_embed));
    ggml_tensor * diff = ggml_sub(ctx, xx, sx);
    ggml_tensor * kx = mix(ctx, sx, diff, l.ffn_mix_k);
    ggml_tensor * rx = mix(ctx, sx, diff, l.ffn_mix_r);
    store(ctx, gf, last_column(ctx, xx), io.state_out, m.v4_state_offset(il, V4_FFN_XX));
    // r = sigmoid(rx @ rw); vx = relu(kx @ kw) ** 2; x + r * (vx @ vw)
    ggml_tensor * r = ggml_sigmoid(ctx, ggml_mul_mat(ctx, l.ffn_r, rx));
    ggml_tensor * vx = ggml_sqr(ctx, ggml_relu(ctx, ggml_mul_mat(ctx, l.ffn_k, kx)));
    return ggml_add(ctx, x, ggml_mul(ctx, r, ggml_mul_mat(ctx, l.ffn_v, vx)));
}

}  // namespace

size_t graph_max_nodes(const Model & model) {
    return NODES_PER_LAYER * model.hparams().n_layer + NODES_EXTRA;
}

void build_graph_v4(ggml_context * ctx, ggml_cgraph * gf, const Model & m, GraphIO & io, LogitsMode logits) {
    const HParams & hp = m.hparams();
    // x = emb[tokens]  (ln0 was applied to emb at conversion, as the official
    // loader does; files that keep ln0 apply it here)
    ggml_tensor * x = ggml_get_rows(ctx, m.emb, io.tokens);
    if (!hp.emb_ln0_applied) {
        x = layer_norm(ctx, x, m.ln0_w, m.ln0_b, hp.ln_eps);
    }
    for (uint32_t il = 0; il < hp.n_layer; ++il) {
        x = time_mixing(ctx, gf, m, il, x, io);
        x = channel_mixing(ctx, gf, m, il, x, io);
    }
    io.logits = nullptr;
    if (logits != LogitsMode::NONE) {
        // x = F.layer_norm(x[-1], ..., ln_out) @ head   (every x for ALL)
        if (logits == LogitsMode::LAST) {
            x = ggml_view_2d(ctx, x, hp.n_embed, 1, x->nb[1], (x->ne[1] - 1) * x->nb[1]);
        }
        ggml_tensor * h = layer_norm(ctx, x, m.ln_out_w, m.ln_out_b, hp.ln_eps);
        io.logits = ggml_mul_mat(ctx, m.head, h);
        ggml_set_name(io.logits, "logits");
        ggml_set_output(io.logits);
        ggml_build_forward_expand(gf, io.logits);
    }
}

}  // namespace rwkv
