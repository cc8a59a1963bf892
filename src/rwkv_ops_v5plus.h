// Custom ggml operations of RWKV-5, 6 and 7 (CPU kernels) and their graph
// wrappers.
//
// Why not ggml's own rwkv_wkv6 / rwkv_wkv7: ggml_rwkv_wkv7 (ggml 0.20.2)
// returns wrong outputs for head sizes below 64 (measured: errors of 1e5
// and more with head size 8 or 16, correct with 64), and neither op
// includes the GroupNorm (ln_x), the decay transform or the v7 bonus term,
// which cost several extra graph nodes and passes over memory each.  These
// ops compute, per head and token, exactly the official recurrences (see the
// comments above each kernel) and are checked against float64 references
// through the whole model (tests/reference_rwkv5plus.py).
//
// Tensors are [D, T] (one column per token, D = n_head * head_size); every
// input must be contiguous f32.  Heads are split across the threads.
#pragma once

struct ggml_context;
struct ggml_tensor;

namespace rwkv {

struct HParams;

// How a token-shift mix combines the current (xx) and previous (sx) token.
//   V4: xx * mu + sx * (1 - mu)   (RWKV-4 and 5.x: time_mix_*)
//   V6: xx + (sx - xx) * mu       (RWKV-6 time_maa_*, RWKV-7 x_*)
enum class MixForm { V4, V6 };

// Token shift then n mixes (1 <= n <= 8):
//   sx = torch.cat((x_prev.unsqueeze(0), xx[:-1, :]))
//   out[i] = mix(xx, sx, mu[i])
// xx: [D, T]; x_prev, mu[i]: [D].  Returns [D, T, n]: mix i is the
// contiguous [D, T] block i.
ggml_tensor * shift_mix(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * const * mu, int n,
                        MixForm form);

// RWKV-6 data-dependent token shift (the second half of att_seq_v6_0):
//   sx = cat(x_prev, xx[:-1]) - xx
//   out[i] = xx + sx * (maa[i] + m[i])        i = 0..4 (w, k, v, r, g)
// m: [D, T, 5], the LoRA output; maa[i]: [D].  Returns [D, T, 5].
ggml_tensor * shift_mix_lora(ggml_context * ctx, ggml_tensor * xx, ggml_tensor * x_prev, ggml_tensor * m,
                             ggml_tensor * const * maa);

// RWKV-5/6 WKV followed by ln_x, per head h (state S_h is N x N, indexed
// [key i, value j]) and token t:
//   a_ij = k_i v_j;  y_j = sum_i r_i (u_i a_ij + S_ij);  S_ij = a_ij + w_i S_ij
//   out = GroupNorm(y, H groups, eps = hp.ln_x_eps) * lnx_w + lnx_b
// decay: [D]; with decay_lora == nullptr (v5) it is w itself (stored as
// exp(-exp(time_decay))); otherwise (v6) w = exp(-exp(decay + decay_lora))
// with decay_lora [D, T].  bonus u: [D].  state: [D * N] (H matrices).
// Returns [D, T + N]: columns 0..T-1 are out, then the new state.
ggml_tensor * wkv5(ggml_context * ctx, const HParams & hp, ggml_tensor * r, ggml_tensor * k, ggml_tensor * v,
                   ggml_tensor * decay, ggml_tensor * decay_lora, ggml_tensor * bonus, ggml_tensor * lnx_w,
                   ggml_tensor * lnx_b, ggml_tensor * state);

// RWKV-7 per-token vectors before the WKV (RWKV_x070_TMix_one):
//   a  = sigmoid(a0 + a_lora)
//   kk = F.normalize((k * k_k).view(H, N), dim=-1)
//   k' = k * (1 + (a - 1) * k_a)
//   v' = v + (v_first - v) * sigmoid(v0 + v_lora)   (v' = v when v_lora is null: layer 0)
// Returns [D, T, 4]: blocks kk, k', v', a.
ggml_tensor * wkv7_prepare(ggml_context * ctx, const HParams & hp, ggml_tensor * k, ggml_tensor * v,
                           ggml_tensor * a_lora, ggml_tensor * a0, ggml_tensor * k_k, ggml_tensor * k_a,
                           ggml_tensor * v_lora, ggml_tensor * v0, ggml_tensor * v_first);

// Block b ([D, T]) of wkv7_prepare's output.
enum Wkv7PrepBlock { WKV7_KK = 0, WKV7_K = 1, WKV7_V = 2, WKV7_A = 3, WKV7_BLOCKS = 4 };

// RWKV-7 WKV, ln_x and bonus, per head (state S_h is N x N, indexed
// [value i, key j]) and token:
//   w_j = exp(-0.606531 * sigmoid(w0_j + w_lora_j))
//   S = S diag(w) + (S (-kk)) (kk * a)^T + v k'^T;   y = S r
//   out = GroupNorm(y, eps = hp.ln_x_eps) * lnx_w + lnx_b + sum(r * k' * r_k) * v'
// prep: wkv7_prepare's output; r_k: [N, H].  Returns [D, T + N]: columns
// 0..T-1 are out, then the new state.
ggml_tensor * wkv7(ggml_context * ctx, const HParams & hp, ggml_tensor * r, ggml_tensor * w_lora, ggml_tensor * w0,
                   ggml_tensor * prep, ggml_tensor * r_k, ggml_tensor * lnx_w, ggml_tensor * lnx_b,
                   ggml_tensor * state);

}  // namespace rwkv
