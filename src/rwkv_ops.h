// Custom ggml operations of rwkv_cpp (CPU kernels) and their graph wrappers.
#pragma once

struct ggml_context;
struct ggml_tensor;

namespace rwkv {

// RWKV-4 WKV over a sequence, with the numerically stable max-exponent state.
//   k, v   : [A, T] f32, contiguous (one column per token)
//   first  : [A] time_first (u), decay: [A] = -exp(time_decay) (w)
//   state  : [3A] = (aa, bb, pp), contiguous
// Returns [A, T + 3]: columns 0..T-1 are wkv per token, columns T..T+2 the new
// aa, bb, pp.
ggml_tensor * wkv4(ggml_context * ctx, ggml_tensor * k, ggml_tensor * v, ggml_tensor * first,
                   ggml_tensor * decay, ggml_tensor * state);

// The scalar kernel behind wkv4, over channels [c0, c1) (exposed for tests
// and for the reference comparison).
void wkv4_kernel(int n_channels, int n_tokens, int c0, int c1, const float * k, const float * v,
                 const float * first, const float * decay, const float * state_in, float * out);

}  // namespace rwkv
