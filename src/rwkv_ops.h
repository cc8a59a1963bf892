// Custom ggml operations of rwkv_cpp (CPU kernels) and their graph wrappers.
//
// ggml synchronises all threads after every graph node, so chains of small
// element-wise nodes cost more in barriers than in arithmetic (one RWKV-4
// layer was 37 nodes).  These fused operations do one block's element-wise
// work in one node.  Two of them also write their part of the new recurrent
// state straight into the graph's output-state buffer (passed as an extra
// source): that buffer is owned by the context, never read by the graph and
// never touched by the graph allocator, so the side effect is safe and saves
// a copy node per state slot.
#pragma once

struct ggml_context;
struct ggml_tensor;

namespace rwkv {

constexpr int LN_SHIFT_MIX_MAX = 3;

// Fused pre-norm, token shift and mixes of an RWKV-4 block:
//   xx = F.layer_norm(x, w, b, eps)                 (per column of x [D, T])
//   sx = cat(x_prev, xx[:, :-1])                    (previous token's xx)
//   out[:, m*T + t] = sx_t + (xx_t - sx_t) * mix_m  (= xx*mix + sx*(1-mix))
// for the n_mix mix vectors; returns [D, n_mix*T].  Writes xx[:, T-1] into
// x_prev_out.  eps must outlive the graph (it is read at compute time).
ggml_tensor * ln_shift_mix(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b,
                           ggml_tensor * x_prev, ggml_tensor * x_prev_out, ggml_tensor * const * mixes, int n_mix,
                           const float * eps);

// RWKV-4 WKV over a sequence with the max-exponent state, gated by the
// receptance:
//   k, v, r : [A, T] f32 (contiguous), first: [A] time_first (u),
//   decay   : [A] = -exp(time_decay) (w),
//   state_in: [3A] = (aa, bb, pp); state_out: [3A] receives the new state.
// Returns [A, T]: sigmoid(r) * wkv.
ggml_tensor * wkv4_gated(ggml_context * ctx, ggml_tensor * k, ggml_tensor * v, ggml_tensor * r, ggml_tensor * first,
                         ggml_tensor * decay, ggml_tensor * state_in, ggml_tensor * state_out);

// torch.relu(x) ** 2
ggml_tensor * relu_sq(ggml_context * ctx, ggml_tensor * x);

// x + torch.sigmoid(r) * v   (all of one shape)
ggml_tensor * gated_residual(ggml_context * ctx, ggml_tensor * x, ggml_tensor * r, ggml_tensor * v);

// The scalar WKV-4 kernel over channels [c0, c1): writes out = sigmoid(r) *
// wkv and the new (aa, bb, pp) into state_out.
void wkv4_kernel(int n_channels, int n_tokens, int c0, int c1, const float * k, const float * v, const float * r,
                 const float * first, const float * decay, const float * state_in, float * out, float * state_out);

}  // namespace rwkv
