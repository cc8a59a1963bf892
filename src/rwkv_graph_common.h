// Graph blocks shared by the builders of several RWKV versions: layer norm,
// state slices, the embedding lookup and the output head.  Each function is
// the ggml form of one line of the official PyTorch code (quoted above it).
#pragma once

#include <cstddef>
#include <cstdint>

struct ggml_context;
struct ggml_cgraph;
struct ggml_tensor;

namespace rwkv {

class Model;
struct FfnRKV;
struct GraphIO;
enum class LogitsMode;
enum class MixForm;

namespace blocks {

// x @ w.T for a matrix w [out, in] (ggml [in, out]) and x [in, T]: the
// packed kernel when the model packed w (rwkv_packed.h), else ggml's.
ggml_tensor * matmul(ggml_context * ctx, const Model & m, ggml_tensor * w, ggml_tensor * x);

// F.layer_norm(x, (D,), weight=w, bias=b, eps=eps), per column of x [D, T]
ggml_tensor * layer_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b, float eps);

// state[offset : offset + n] as a 1-D view.
ggml_tensor * state_view(ggml_context * ctx, ggml_tensor * state, size_t offset, int64_t n);

// x[:, -1]: the last column of a [D, T] tensor.
ggml_tensor * last_column(ggml_context * ctx, ggml_tensor * x);

// state_out[offset : offset + numel(src)] = src, as a graph output.
void store(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * src, ggml_tensor * state_out, size_t offset);

// x = emb[tokens]; the official loaders fold ln0 into emb (our converter
// does too); files that keep ln0 (rwkv.cpp imports) apply it here.
ggml_tensor * embed(ggml_context * ctx, const Model & m, const GraphIO & io);

// x = F.layer_norm(x[-1] (or every x), ..., ln_out) @ head -> io.logits.
void output_logits(ggml_context * ctx, ggml_cgraph * gf, const Model & m, ggml_tensor * x, GraphIO & io,
                   LogitsMode logits);

// The input of a token-shift block: xx = F.layer_norm(x, ...) and the
// state's x_prev of that block.
struct Shifted {
    ggml_tensor * xx;
    ggml_tensor * x_prev;
};

// xx = F.layer_norm(x, ..., w, b); x_prev = state_in[offset : offset + D];
// stores xx[-1] at state_out[offset] (the next call's x_prev).
Shifted norm_shift(ggml_context * ctx, ggml_cgraph * gf, const Model & m, ggml_tensor * x, ggml_tensor * w,
                   ggml_tensor * b, const GraphIO & io, size_t offset);

// Column block m (T columns) of a [D, n*T] tensor (the fused ln_shift_mix output).
ggml_tensor * column_block(ggml_context * ctx, ggml_tensor * t, int64_t m, int64_t T);

// Block i ([D, T]) of a [D, T, n] tensor.
ggml_tensor * block(ggml_context * ctx, ggml_tensor * t, int64_t i);

// Splits a [D, T + N] WKV result (wkv5, wkv7): stores its new state
// (columns T..) at state_out[offset] and returns its output columns [D, T].
ggml_tensor * wkv_output(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * out, int64_t n_tokens,
                         const GraphIO & io, size_t offset);

// Channel mixing with receptance (RWKV-4/5 ffn_one, RWKV-6 ffn_one_v6):
//   kx, rx = mix(xx, sx, k), mix(xx, sx, r)      (form: v5 or v6 mix)
//   x + sigmoid(rx @ rw) * (relu(kx @ kw) ** 2 @ vw)
ggml_tensor * channel_mix_rkv(ggml_context * ctx, ggml_cgraph * gf, const Model & m, ggml_tensor * x,
                              const FfnRKV & f, ggml_tensor * ln_w, ggml_tensor * ln_b, const GraphIO & io,
                              size_t offset, MixForm form);

}  // namespace blocks
}  // namespace rwkv
