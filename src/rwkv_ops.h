// Custom ggml operations of rwkv_cpp (CPU kernels) and their graph
// wrappers, grouped by what they compute:
//   token-shift mixes  (rwkv_ops_shift.cpp)       ln_shift_mix, shift_mix, shift_mix_lora
//   WKV recurrences    (rwkv_ops_wkv4/5/7.cpp)    wkv4_gated, wkv5, wkv7_prepare, wkv7
//   element-wise       (rwkv_ops_elementwise.cpp) relu_sq, gated_residual
// Each is tested alone against a float64 reference (tests/test_ops.py,
// through rwkv_testing_run_op).
//
// Why fused ops: ggml synchronises all threads after every graph node, so
// chains of small element-wise nodes cost more in barriers than in
// arithmetic (one RWKV-4 layer was 37 nodes).  These ops do one block's
// element-wise work in one node.
//
// Why not ggml's own rwkv_wkv6 / rwkv_wkv7: ggml_rwkv_wkv7 (ggml 0.20.2)
// returns wrong outputs for head sizes below 64 (measured: errors of 1e5 and
// more with head size 8 or 16, correct with 64), and neither op includes the
// GroupNorm (ln_x), the decay transform or the v7 bonus term, which cost
// several extra graph nodes and passes over memory each.
//
// Tensors are [D, T] (one column per token); every input must be contiguous
// f32.  The ops take plain sizes, never the model's hyper-parameters.  An
// epsilon passed by pointer is read at compute time: it must outlive the
// graph.
//
// Batches of sequences: the ops that carry something from one token to the
// next (the token shifts and the WKV recurrences) take `seqs`, an i32
// tensor of n_seqs + 1 offsets read at compute time: sequence s is the
// columns [seqs[s], seqs[s+1]) of every [D, T] input (empty for a padded
// slot), the columns from seqs[n_seqs] to T are padding (their outputs are
// finite: zeros from the WKV ops).  Their state inputs and outputs are then
// [n, n_seqs] with row s the state of sequence s, views into the state
// buffers with any row stride.  seqs == nullptr: one sequence of all T
// columns (the state a single row).  The layout is an input of the graph,
// so one graph serves every mix of sequence lengths of its (T, n_seqs).
#pragma once

#include <cstdint>

struct ggml_context;
struct ggml_tensor;

namespace rwkv {

// ---------------------------------------------------------------------------
// Token-shift mixes
// ---------------------------------------------------------------------------

// The most mixes of one node: ggml_custom_4d takes fewer than GGML_MAX_SRC
// (10) sources, of which ln_shift_mix needs 6 and shift_mix 3 for others.
constexpr int LN_SHIFT_MIX_MAX = 3;
constexpr int SHIFT_MIX_MAX = 6;
constexpr int SHIFT_MIX_LORA_N = 5;

// How a token-shift mix combines the current (xx) and previous (sx) token.
// The two are equal in exact arithmetic but round differently; each follows
// the official code of the versions that use it.
enum class MixForm {
    WeightedSum,  // xx * mu + sx * (1 - mu)   (RWKV-4 and 5.x: time_mix_*)
    AddDelta,     // xx + (sx - xx) * mu       (RWKV-6 time_maa_*, RWKV-7 x_*)
};

// Fused pre-norm, token shift and mixes of an RWKV-4 block:
//   xx = F.layer_norm(x, w, b, eps)                 (per column of x [D, T])
//   sx = cat(x_prev, xx[:, :-1])                    (previous token's xx, per sequence)
//   out[:, m*T + t] = sx_t + (xx_t - sx_t) * mix_m  (= xx*mix + sx*(1-mix))
// for the n_mix (1..LN_SHIFT_MIX_MAX) mix vectors; returns [D, n_mix*T].
// Writes each sequence's last xx column into its row of x_prev_out, a
// buffer that the graph never reads and the graph allocator never touches
// (the context's output state), so the side effect is safe and saves a copy
// node.
ggml_tensor * ln_shift_mix(ggml_context * ctx, ggml_tensor * x, ggml_tensor * w, ggml_tensor * b,
                           ggml_tensor * x_prev, ggml_tensor * x_prev_out, ggml_tensor * seqs,
                           ggml_tensor * const * mixes, int n_mix, const float * eps);

// Token shift then n mixes (1 <= n <= SHIFT_MIX_MAX):
//   sx = torch.cat((x_prev.unsqueeze(0), xx[:-1, :]))
//   out[i] = mix(xx, sx, mu[i])        (mix: the formula of `form`)
// xx: [D, T]; x_prev, mu[i]: [D].  Returns [D, T, n]: mix i is the
// contiguous [D, T] block i.
ggml_tensor * shift_mix(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * seqs,
                        ggml_tensor * const * mu, int n, MixForm form);

// RWKV-6 data-dependent token shift (the second half of att_seq_v6_0):
//   sx = cat(x_prev, xx[:-1]) - xx
//   out[i] = xx + sx * (maa[i] + m[i])        i = 0..4 (w, k, v, r, g)
// m: [D, T, 5], the LoRA output; maa[i]: [D].  Returns [D, T, 5].
ggml_tensor * shift_mix_lora(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * seqs,
                             ggml_tensor * m, ggml_tensor * const * maa);

// ---------------------------------------------------------------------------
// WKV recurrences
// ---------------------------------------------------------------------------

// RWKV-4 WKV over a sequence with the max-exponent state, gated by the
// receptance:
//   k, v, r : [A, T], first: [A] time_first (u),
//   decay   : [A] = -exp(time_decay) (w),
//   state_in: [3A] = (aa, bb, pp); state_out: [3A] receives the new state
//   (written as a side effect, like ln_shift_mix's x_prev_out).
// Returns [A, T]: sigmoid(r) * wkv.
ggml_tensor * wkv4_gated(ggml_context * ctx, ggml_tensor * k, ggml_tensor * v, ggml_tensor * r, ggml_tensor * first,
                         ggml_tensor * decay, ggml_tensor * state_in, ggml_tensor * state_out, ggml_tensor * seqs);

// RWKV-5/6 WKV followed by ln_x, per head h (D = n_head * head_size; state
// S_h is N x N with N = head_size, indexed [key i, value j]) and token t:
//   a_ij = k_i v_j;  y_j = sum_i r_i (u_i a_ij + S_ij);  S_ij = a_ij + w_i S_ij
//   out = GroupNorm(y, n_head groups, eps = *ln_x_eps) * lnx_w + lnx_b
// decay: without decay_per_token (v5) w itself, [D] (stored as
// exp(-exp(time_decay))); with it (v6) time_decay + lora of each token,
// [D, T], and w = exp(-exp(decay)).  bonus u: [D].  state: [D * N] (the H
// matrices) per sequence.  Returns [D, T + N * n_seqs]: columns 0..T-1 are
// out, then the new state of each sequence (N columns each).
ggml_tensor * wkv5(ggml_context * ctx, int64_t n_head, int64_t head_size, const float * ln_x_eps, ggml_tensor * r,
                   ggml_tensor * k, ggml_tensor * v, ggml_tensor * decay, bool decay_per_token, ggml_tensor * bonus,
                   ggml_tensor * lnx_w, ggml_tensor * lnx_b, ggml_tensor * state, ggml_tensor * seqs);

// RWKV-7 per-token vectors before the WKV (RWKV_x070_TMix_one), per head of
// head_size channels:
//   a  = sigmoid(a0 + a_lora)
//   kk = F.normalize((k * k_k).view(H, N), dim=-1)
//   k' = k * (1 + (a - 1) * k_a)
//   v' = v + (v_first - v) * sigmoid(v0 + v_lora)   (v' = v when v_lora is null: layer 0)
// k, v, a_lora, v_lora, v_first: [D, T]; a0, k_k, k_a, v0: [D].
// Returns [D, T, 4]: blocks kk, k', v', a (Wkv7PrepBlock).
ggml_tensor * wkv7_prepare(ggml_context * ctx, int64_t n_head, int64_t head_size, ggml_tensor * k, ggml_tensor * v,
                           ggml_tensor * a_lora, ggml_tensor * a0, ggml_tensor * k_k, ggml_tensor * k_a,
                           ggml_tensor * v_lora, ggml_tensor * v0, ggml_tensor * v_first);

// Block b ([D, T]) of wkv7_prepare's output.
enum Wkv7PrepBlock { WKV7_KK = 0, WKV7_K = 1, WKV7_V = 2, WKV7_A = 3, WKV7_BLOCKS = 4 };

// RWKV-7 WKV, ln_x and bonus, per head (state S_h is N x N, indexed
// [value i, key j]) and token:
//   w_j = exp(-0.606531 * sigmoid(w0_j + w_lora_j))
//   S = S diag(w) + (S (-kk)) (kk * a)^T + v k'^T;   y = S r
//   out = GroupNorm(y, eps = *ln_x_eps) * lnx_w + lnx_b + sum(r * k' * r_k) * v'
// r, w_lora: [D, T]; prep: wkv7_prepare's output; w0, r_k (H, N), lnx_w,
// lnx_b: [D]; state: [D * N] per sequence.  Returns [D, T + N * n_seqs]:
// columns 0..T-1 are out, then the new state of each sequence (N columns
// each).
ggml_tensor * wkv7(ggml_context * ctx, int64_t n_head, int64_t head_size, const float * ln_x_eps, ggml_tensor * r,
                   ggml_tensor * w_lora, ggml_tensor * w0, ggml_tensor * prep, ggml_tensor * r_k,
                   ggml_tensor * lnx_w, ggml_tensor * lnx_b, ggml_tensor * state, ggml_tensor * seqs);

// ---------------------------------------------------------------------------
// Element-wise
// ---------------------------------------------------------------------------

// torch.relu(x) ** 2
ggml_tensor * relu_sq(ggml_context * ctx, ggml_tensor * x);

// x + torch.sigmoid(r) * v   (all of one shape)
ggml_tensor * gated_residual(ggml_context * ctx, ggml_tensor * x, ggml_tensor * r, ggml_tensor * v);

// y[i] = e^x[i] for i < n by ops::exp_poly, compiled as the kernels that
// inline it are (RWKV_OPS_CLONES): the tests' window on its accuracy.
void exp_poly_array(const float * x, float * y, int64_t n);

}  // namespace rwkv
