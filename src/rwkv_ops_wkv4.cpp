// RWKV-4 WKV (rwkv_ops.h): wkv4_gated.
#include "rwkv_ops.h"
#include "rwkv_ops_util.h"

#include "ggml.h"

#include <algorithm>
#include <cmath>

namespace rwkv {

using ops::CHANNEL_BLOCK;
using ops::exp_f32;
using ops::f32;
using ops::f32_mut;
using ops::Range;
using ops::check_rows_f32;
using ops::check_seqs;
using ops::row_f32;
using ops::row_f32_mut;
using ops::Seqs;
using ops::sigmoid;
using ops::thread_range;

namespace {

// The scalar WKV-4 recurrence of one sequence (columns [t0, t1)) over
// channels [c0, c1) of A: writes out = sigmoid(r) * wkv and the new
// (aa, bb, pp) into state_out.
void wkv4_channels(int A, int64_t t0, int64_t t1, int c0, int c1, const float * k, const float * v, const float * r,
                   const float * first, const float * decay, const float * state_in, float * out, float * state_out) {
    float * aa = state_out;
    float * bb = state_out + A;
    float * pp = state_out + 2 * A;
    for (int c = c0; c < c1; ++c) {
        aa[c] = state_in[c];
        bb[c] = state_in[A + c];
        pp[c] = state_in[2 * A + c];
    }
    for (int64_t t = t0; t < t1; ++t) {
        const size_t o = static_cast<size_t>(t) * A;
        for (int c = c0; c < c1; ++c) {
            // Output with the bonus u for the current token:
            //   wkv = (aa*exp(pp) + exp(u+k)*v) / (bb*exp(pp) + exp(u+k)),
            // every exponent shifted by p = max(pp, u+k) so nothing overflows.
            const float kk = k[o + c];
            const float vv = v[o + c];
            float ww = first[c] + kk;
            float p = std::max(pp[c], ww);
            float e1 = exp_f32(pp[c] - p);
            float e2 = exp_f32(ww - p);
            const float wkv = (e1 * aa[c] + e2 * vv) / (e1 * bb[c] + e2);
            out[o + c] = sigmoid(r[o + c]) * wkv;
            // State update: decay the past by exp(w) (w = -exp(time_decay) < 0)
            // and add the current token, again relative to the new max p.
            ww = decay[c] + pp[c];
            p = std::max(ww, kk);
            e1 = exp_f32(ww - p);
            e2 = exp_f32(kk - p);
            aa[c] = e1 * aa[c] + e2 * vv;
            bb[c] = e1 * bb[c] + e2;
            pp[c] = p;
        }
    }
}

// src: 0 k, 1 v, 2 r, 3 first, 4 decay, 5 state_in, 6 state_out, 7 seqs
// (or null).  Channels are split between threads; each thread runs every
// sequence over its channels and zeroes them in the padding columns.
void wkv4_gated_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const ggml_tensor * k = dst->src[0];
    const int A = static_cast<int>(k->ne[0]);
    const int64_t T = k->ne[1];
    const Range c = thread_range(A, ith, nth, CHANNEL_BLOCK);
    if (c.begin >= c.end) return;
    const int c0 = static_cast<int>(c.begin), c1 = static_cast<int>(c.end);
    const Seqs seqs(dst->src[7], T);
    for (int64_t s = 0; s < seqs.n(); ++s) {
        if (seqs.begin(s) == seqs.end(s)) continue;
        wkv4_channels(A, seqs.begin(s), seqs.end(s), c0, c1, f32(k), f32(dst->src[1]), f32(dst->src[2]),
                      f32(dst->src[3]), f32(dst->src[4]), row_f32(dst->src[5], s), f32_mut(dst),
                      row_f32_mut(dst->src[6], s));
    }
    for (int64_t t = seqs.used(); t < T; ++t) {
        std::fill(f32_mut(dst) + t * A + c0, f32_mut(dst) + t * A + c1, 0.0f);
    }
}

}  // namespace

ggml_tensor * wkv4_gated(ggml_context * ctx, ggml_tensor * k, ggml_tensor * v, ggml_tensor * r, ggml_tensor * first,
                         ggml_tensor * decay, ggml_tensor * state_in, ggml_tensor * state_out, ggml_tensor * seqs) {
    const int64_t S = seqs == nullptr ? 1 : ggml_nelements(seqs) - 1;
    GGML_ASSERT(ggml_is_contiguous(k) && ggml_is_contiguous(v) && ggml_is_contiguous(r));
    GGML_ASSERT(ggml_are_same_shape(k, v) && ggml_are_same_shape(k, r));
    GGML_ASSERT(k->type == GGML_TYPE_F32 && v->type == GGML_TYPE_F32 && r->type == GGML_TYPE_F32);
    GGML_ASSERT(ggml_nelements(first) == k->ne[0] && ggml_nelements(decay) == k->ne[0]);
    check_seqs(seqs, S);
    check_rows_f32(state_in, 3 * k->ne[0], S);
    check_rows_f32(state_out, 3 * k->ne[0], S);
    ggml_tensor * args[] = {k, v, r, first, decay, state_in, state_out, seqs};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, k->ne[0], k->ne[1], 1, 1, args, 8, wkv4_gated_compute,
                          GGML_N_TASKS_MAX, nullptr);
}

}  // namespace rwkv
