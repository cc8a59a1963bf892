#include "rwkv_graph_common.h"

#include "rwkv_model.h"
#include "rwkv_ops.h"
#include "rwkv_packed.h"

#include "ggml.h"

namespace rwkv {

GraphBuilder::GraphBuilder(ggml_context * ctx_, ggml_cgraph * gf_, const Model & model_, GraphIO & io_,
                           LogitsMode logits_)
    : ctx(ctx_), gf(gf_), model(model_), hp(model_.hparams()), io(io_), logits(logits_),
      n_tokens(io_.tokens->ne[0]), n_seqs(io_.last->ne[0]) {
    name(io.tokens, "tokens", NO_LAYER);
    name(io.seqs, "seqs", NO_LAYER);
    name(io.last, "last", NO_LAYER);
    name(io.state_in, "state_in", NO_LAYER);
    name(io.state_out, "state_out", NO_LAYER);
}

ggml_tensor * GraphBuilder::name(ggml_tensor * t, const std::string & what, int il) const {
    if (il == NO_LAYER) {
        ggml_set_name(t, what.c_str());
    } else {
        ggml_format_name(t, "%s.%d", what.c_str(), il);
    }
    return t;
}

void GraphBuilder::keep(ggml_tensor * t) const { ggml_build_forward_expand(gf, t); }

ggml_tensor * GraphBuilder::matmul(ggml_tensor * w, ggml_tensor * x, const std::string & what, int il) const {
    const PackedMatrix * p = model.packed(w);
    if (p == nullptr) {
        return name(ggml_mul_mat(ctx, w, x), what, il);
    }
    ggml_tensor * y = name(packed_mul_mat(ctx, *p, x), what, il);
    // The packed product's own input nodes (rwkv_packed.h), each the first
    // source of the next: a contiguous copy of x, its 8-bit quantization.
    for (ggml_tensor * s = y->src[0]; s != x; s = s->src[0]) {
        name(s, what + (s->type == GGML_TYPE_I8 ? "_q8" : "_cont"), il);
    }
    return y;
}

void GraphBuilder::products_node(const PackedProduct * p, int n, const char * node, const char * const * what,
                                 ggml_tensor ** out, int il) const {
    ggml_tensor * y = name(packed_products(ctx, p, n, out), node, il);
    for (int i = 0; i < n; ++i) {
        for (ggml_tensor * s = y->src[i]; s != p[i].x; s = s->src[0]) {  // a contiguous copy, a quantization
            name(s, std::string(what[i]) + (s->type == GGML_TYPE_I8 ? "_q8" : "_cont"), il);
        }
        name(out[i], what[i], il);
    }
}

bool GraphBuilder::products_if_packed(ggml_tensor * const * w, ggml_tensor * const * x, const PackedAct * act, int n,
                                      const char * node, const char * const * what, ggml_tensor ** out,
                                      int il) const {
    PackedProduct products[PACKED_PRODUCTS_MAX] = {};
    for (int i = 0; i < n; ++i) {
        products[i] = {model.packed(w[i]), x[i], act != nullptr ? act[i] : PackedAct::NONE};
        if (products[i].w == nullptr) return false;
    }
    products_node(products, n, node, what, out, il);
    return true;
}

ggml_tensor * GraphBuilder::layer_norm(ggml_tensor * x, NormWeights ln, const std::string & what, int il) const {
    ggml_tensor * standard = name(ggml_norm(ctx, x, hp.ln_eps), what + "_std", il);
    return name(ggml_add(ctx, name(ggml_mul(ctx, standard, ln.w), what + "_scaled", il), ln.b), what, il);
}

ggml_tensor * GraphBuilder::state_in(size_t offset, int64_t n, const std::string & slot, int il) const {
    ggml_tensor * v = ggml_view_2d(ctx, io.state_in, n, n_seqs, io.state_in->nb[1], offset * sizeof(float));
    return name(v, slot + "_in", il);
}

ggml_tensor * GraphBuilder::state_out(size_t offset, int64_t n, const std::string & slot, int il) const {
    ggml_tensor * v = ggml_view_2d(ctx, io.state_out, n, n_seqs, io.state_out->nb[1], offset * sizeof(float));
    return name(v, slot + "_out", il);
}

void GraphBuilder::store(ggml_tensor * src, size_t offset, const std::string & slot, int il) const {
    keep(name(ggml_cpy(ctx, src, state_out(offset, src->ne[0], slot, il)), slot + "_store", il));
}

ggml_tensor * GraphBuilder::last_columns(ggml_tensor * x, const std::string & what, int il) const {
    return name(ggml_get_rows(ctx, x, io.last), what, il);
}

ggml_tensor * GraphBuilder::column_block(ggml_tensor * t, int64_t m, const std::string & what, int il) const {
    return name(ggml_view_2d(ctx, t, t->ne[0], n_tokens, t->nb[1], m * n_tokens * t->nb[1]), what, il);
}

ggml_tensor * GraphBuilder::block(ggml_tensor * t, int64_t i, const std::string & what, int il) const {
    return name(ggml_view_2d(ctx, t, t->ne[0], t->ne[1], t->nb[1], i * t->nb[2]), what, il);
}

ggml_tensor * GraphBuilder::embed() const {
    ggml_tensor * x = name(ggml_get_rows(ctx, model.emb, io.tokens), "emb", NO_LAYER);
    if (!hp.emb_ln0_applied) {
        // F.layer_norm(emb[tokens], ..., ln0) in fp32, as rwkv.cpp computes it
        x = layer_norm(x, {model.ln0_w, model.ln0_b}, "ln0", NO_LAYER);
    }
    return x;
}

void GraphBuilder::output_logits(ggml_tensor * x) const {
    io.logits = nullptr;
    if (logits == LogitsMode::NONE) {
        return;
    }
    if (logits == LogitsMode::LAST) {
        x = last_columns(x, "out_last", NO_LAYER);
    }
    ggml_tensor * h = layer_norm(x, {model.ln_out_w, model.ln_out_b}, "ln_out", NO_LAYER);
    io.logits = matmul(model.head, h, "logits", NO_LAYER);
    ggml_set_output(io.logits);
    keep(io.logits);
}

Shifted GraphBuilder::norm_shift(ggml_tensor * x, NormWeights ln, size_t offset, const std::string & part,
                                 int il) const {
    ggml_tensor * xx = layer_norm(x, ln, part + "_norm", il);
    // xx[:, -1] of each sequence
    store(last_columns(xx, part + "_norm_last", il), offset, part + "_shift", il);
    return {xx, state_in(offset, hp.n_embed, part + "_shift", il)};
}

ggml_tensor * GraphBuilder::wkv_output(ggml_tensor * out, size_t offset, int il) const {
    const int64_t D = out->ne[0], n_state = D * ((out->ne[1] - n_tokens) / n_seqs);
    ggml_tensor * state = name(ggml_view_2d(ctx, out, n_state, n_seqs, n_state * out->nb[0], n_tokens * out->nb[1]),
                               "wkv_state_new", il);
    store(state, offset, "wkv_state", il);
    return name(ggml_view_2d(ctx, out, D, n_tokens, out->nb[1], 0), "wkv_y", il);
}

ggml_tensor * GraphBuilder::channel_mix_rkv(ggml_tensor * x, const FfnRKV & f, NormWeights ln2, size_t offset,
                                            MixForm form, int il) const {
    ggml_tensor * const mu[] = {f.mix_k, f.mix_r};
    ggml_tensor * kx;
    ggml_tensor * rx;
    if (form == MixForm::WeightedSum) {
        // xx = F.layer_norm(x, ln2); sx = cat(state_xx, xx[:-1]);
        // kx, rx = xx * mix + sx * (1 - mix)   (one fused node, which also
        // writes xx[-1] into the output state)
        ggml_tensor * mixed = ln_shift_mix(ctx, x, ln2.w, ln2.b, state_in(offset, hp.n_embed, "ffn_shift", il),
                                           state_out(offset, hp.n_embed, "ffn_shift", il), io.seqs, mu, 2,
                                           &hp.ln_eps);
        keep(name(mixed, "ffn_mix", il));  // keep its state write even without a consumer
        kx = column_block(mixed, 0, "ffn_kx", il);
        rx = column_block(mixed, 1, "ffn_rx", il);
    } else {
        // v6: kx, rx = xx + (sx - xx) * maa
        const Shifted s = norm_shift(x, ln2, offset, "ffn", il);
        ggml_tensor * mixed = name(shift_mix(ctx, s.xx, s.x_prev, io.seqs, mu, 2, form), "ffn_mix", il);
        kx = block(mixed, 0, "ffn_kx", il);
        rx = block(mixed, 1, "ffn_rx", il);
    }
    // vx = relu(kx @ kw) ** 2; x + sigmoid(rx @ rw) * (vx @ vw)   (fused ops;
    // with both matrices packed, the two products and the square are one node)
    ggml_tensor * const w[] = {f.k, f.r};
    ggml_tensor * const in[] = {kx, rx};
    static const PackedAct act[] = {PackedAct::RELU_SQ, PackedAct::NONE};
    static const char * const what[] = {"ffn_k_sq", "ffn_r"};
    ggml_tensor * out[2] = {};
    if (!products_if_packed(w, in, act, 2, "ffn_k", what, out, il)) {
        out[0] = name(relu_sq(ctx, matmul(f.k, kx, "ffn_k", il)), "ffn_k_sq", il);
        out[1] = matmul(f.r, rx, "ffn_r", il);
    }
    ggml_tensor * vx = out[0];
    ggml_tensor * r = out[1];
    return name(gated_residual(ctx, x, r, matmul(f.v, vx, "ffn_v", il)), "ffn_res", il);
}

}  // namespace rwkv
