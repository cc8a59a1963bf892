#include "rwkv_ops.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>

namespace rwkv {

namespace {

constexpr int CHANNEL_BLOCK = 16;  // one cache line of floats per thread boundary

void wkv4_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * k = dst->src[0];
    const ggml_tensor * v = dst->src[1];
    const int A = static_cast<int>(k->ne[0]);
    const int T = static_cast<int>(k->ne[1]);
    const int n_blocks = (A + CHANNEL_BLOCK - 1) / CHANNEL_BLOCK;
    const int per_thread = (n_blocks + nth - 1) / nth;
    const int c0 = std::min(A, ith * per_thread * CHANNEL_BLOCK);
    const int c1 = std::min(A, (ith + 1) * per_thread * CHANNEL_BLOCK);
    if (c0 >= c1) {
        return;
    }
    wkv4_kernel(A, T, c0, c1, static_cast<const float *>(k->data), static_cast<const float *>(v->data),
                static_cast<const float *>(dst->src[2]->data), static_cast<const float *>(dst->src[3]->data),
                static_cast<const float *>(dst->src[4]->data), static_cast<float *>(dst->data));
}

}  // namespace

void wkv4_kernel(int A, int T, int c0, int c1, const float * k, const float * v, const float * first,
                 const float * decay, const float * state_in, float * out) {
    float * aa = out + static_cast<size_t>(T) * A;
    float * bb = aa + A;
    float * pp = bb + A;
    for (int c = c0; c < c1; ++c) {
        aa[c] = state_in[c];
        bb[c] = state_in[A + c];
        pp[c] = state_in[2 * A + c];
    }
    for (int t = 0; t < T; ++t) {
        const float * kt = k + static_cast<size_t>(t) * A;
        const float * vt = v + static_cast<size_t>(t) * A;
        float * ot = out + static_cast<size_t>(t) * A;
        for (int c = c0; c < c1; ++c) {
            // Output with the bonus u for the current token:
            //   wkv = (aa*exp(pp) + exp(u+k)*v) / (bb*exp(pp) + exp(u+k)),
            // every exponent shifted by p = max(pp, u+k) so nothing overflows.
            const float kk = kt[c];
            const float vv = vt[c];
            float ww = first[c] + kk;
            float p = std::max(pp[c], ww);
            float e1 = std::exp(pp[c] - p);
            float e2 = std::exp(ww - p);
            ot[c] = (e1 * aa[c] + e2 * vv) / (e1 * bb[c] + e2);
            // State update: decay the past by exp(w) (w = -exp(time_decay) < 0)
            // and add the current token, again relative to the new max p.
            ww = decay[c] + pp[c];
            p = std::max(ww, kk);
            e1 = std::exp(ww - p);
            e2 = std::exp(kk - p);
            aa[c] = e1 * aa[c] + e2 * vv;
            bb[c] = e1 * bb[c] + e2;
            pp[c] = p;
        }
    }
}

ggml_tensor * wkv4(ggml_context * ctx, ggml_tensor * k, ggml_tensor * v, ggml_tensor * first, ggml_tensor * decay,
                   ggml_tensor * state) {
    GGML_ASSERT(ggml_is_contiguous(k) && ggml_is_contiguous(v) && ggml_are_same_shape(k, v));
    GGML_ASSERT(k->type == GGML_TYPE_F32 && v->type == GGML_TYPE_F32);
    GGML_ASSERT(ggml_nelements(first) == k->ne[0] && ggml_nelements(decay) == k->ne[0]);
    GGML_ASSERT(ggml_is_contiguous(state) && ggml_nelements(state) == 3 * k->ne[0]);
    ggml_tensor * args[] = {k, v, first, decay, state};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, k->ne[0], k->ne[1] + 3, 1, 1, args, 5, wkv4_compute,
                          GGML_N_TASKS_MAX, nullptr);
}

}  // namespace rwkv
