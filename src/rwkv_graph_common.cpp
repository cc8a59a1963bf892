#include "rwkv_graph_common.h"

#include "rwkv_graph.h"
#include "rwkv_model.h"
#include "rwkv_ops.h"
#include "rwkv_packed.h"

#include "ggml.h"

namespace rwkv {
namespace blocks {

ggml_tensor * matmul(ggml_context * ctx, const Model & m, ggml_tensor * w, ggml_tensor * x) {
    const PackedMatrix * p = m.packed(w);
    return p != nullptr ? packed_mul_mat(ctx, *p, x) : ggml_mul_mat(ctx, w, x);
}

ggml_tensor * layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b, float eps) {
    return ggml_add(ctx, ggml_mul(ctx, ggml_norm(ctx, x, eps), w), b);
}

ggml_tensor * state_view(ggml_context * ctx, ggml_tensor * state, size_t offset, int64_t n) {
    return ggml_view_1d(ctx, state, n, offset * sizeof(float));
}

ggml_tensor * last_column(ggml_context * ctx, ggml_tensor * x) {
    return ggml_view_1d(ctx, x, x->ne[0], (x->ne[1] - 1) * x->nb[1]);
}

void store(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * src, ggml_tensor * state_out, size_t offset) {
    ggml_build_forward_expand(gf, ggml_cpy(ctx, src, state_view(ctx, state_out, offset, ggml_nelements(src))));
}

ggml_tensor * embed(ggml_context * ctx, const Model & m, const GraphIO & io) {
    const HParams & hp = m.hparams();
    ggml_tensor * x = ggml_get_rows(ctx, m.emb, io.tokens);
    if (!hp.emb_ln0_applied) {
        // F.layer_norm(emb[tokens], ..., ln0) in fp32, as rwkv.cpp computes it
        x = layer_norm(ctx, x, m.ln0_w, m.ln0_b, hp.ln_eps);
    }
    return x;
}

void output_logits(ggml_context * ctx, ggml_cgraph * gf, const Model & m, ggml_tensor * x, GraphIO & io,
                   LogitsMode logits) {
    const HParams & hp = m.hparams();
    io.logits = nullptr;
    if (logits == LogitsMode::NONE) {
        return;
    }
    if (logits == LogitsMode::LAST) {
        x = ggml_view_2d(ctx, x, hp.n_embed, 1, x->nb[1], (x->ne[1] - 1) * x->nb[1]);
    }
    ggml_tensor * h = layer_norm(ctx, x, m.ln_out_w, m.ln_out_b, hp.ln_eps);
    io.logits = blocks::matmul(ctx, m, m.head, h);
    ggml_set_name(io.logits, "logits");
    ggml_set_output(io.logits);
    ggml_build_forward_expand(gf, io.logits);
}

Shifted norm_shift(ggml_context * ctx, ggml_cgraph * gf, const Model & m, ggml_tensor * x, ggml_tensor * w,
                   ggml_tensor * b, const GraphIO & io, size_t offset) {
    const HParams & hp = m.hparams();
    ggml_tensor * xx = layer_norm(ctx, x, w, b, hp.ln_eps);
    store(ctx, gf, last_column(ctx, xx), io.state_out, offset);
    return {xx, state_view(ctx, io.state_in, offset, hp.n_embed)};
}

ggml_tensor * column_block(ggml_context * ctx, ggml_tensor * t, int64_t m, int64_t T) {
    return ggml_view_2d(ctx, t, t->ne[0], T, t->nb[1], m * T * t->nb[1]);
}

ggml_tensor * block(ggml_context * ctx, ggml_tensor * t, int64_t i) {
    return ggml_view_2d(ctx, t, t->ne[0], t->ne[1], t->nb[1], i * t->nb[2]);
}

ggml_tensor * wkv_output(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * out, int64_t n_tokens,
                         const GraphIO & io, size_t offset) {
    const int64_t D = out->ne[0], n_state = D * (out->ne[1] - n_tokens);
    store(ctx, gf, ggml_view_1d(ctx, out, n_state, n_tokens * out->nb[1]), io.state_out, offset);
    return ggml_view_2d(ctx, out, D, n_tokens, out->nb[1], 0);
}

ggml_tensor * channel_mix_rkv(ggml_context * ctx, ggml_cgraph * gf, const Model & m, ggml_tensor * x,
                              const FfnRKV & f, ggml_tensor * ln_w, ggml_tensor * ln_b, const GraphIO & io,
                              size_t offset, MixForm form) {
    ggml_tensor * const mu[] = {f.mix_k, f.mix_r};
    ggml_tensor * kx;
    ggml_tensor * rx;
    if (form == MixForm::WeightedSum) {
        // xx = F.layer_norm(x, ln2); sx = cat(state_xx, xx[:-1]);
        // kx, rx = xx * mix + sx * (1 - mix)   (one fused node, which also
        // writes xx[-1] into the output state)
        const HParams & hp = m.hparams();
        ggml_tensor * mixed = ln_shift_mix(ctx, x, ln_w, ln_b, state_view(ctx, io.state_in, offset, hp.n_embed),
                                           state_view(ctx, io.state_out, offset, hp.n_embed), mu, 2, &hp.ln_eps);
        ggml_build_forward_expand(gf, mixed);  // keep its state write even without a consumer
        kx = column_block(ctx, mixed, 0, x->ne[1]);
        rx = column_block(ctx, mixed, 1, x->ne[1]);
    } else {
        // v6: kx, rx = xx + (sx - xx) * maa
        const Shifted s = norm_shift(ctx, gf, m, x, ln_w, ln_b, io, offset);
        ggml_tensor * mixed = shift_mix(ctx, s.xx, s.x_prev, mu, 2, form);
        kx = block(ctx, mixed, 0);
        rx = block(ctx, mixed, 1);
    }
    // vx = relu(kx @ kw) ** 2; x + sigmoid(rx @ rw) * (vx @ vw)   (fused ops)
    ggml_tensor * vx = relu_sq(ctx, blocks::matmul(ctx, m, f.k, kx));
    return gated_residual(ctx, x, blocks::matmul(ctx, m, f.r, rx), blocks::matmul(ctx, m, f.v, vx));
}

}  // namespace blocks
}  // namespace rwkv
