// Element-wise ops (rwkv_ops.h): relu_sq, gated_residual, exp_poly_array.
#include "rwkv_ops.h"
#include "rwkv_ops_util.h"

#include "ggml.h"

namespace rwkv {

using ops::CHANNEL_BLOCK;
using ops::f32;
using ops::f32_mut;
using ops::Range;
using ops::sigmoid;
using ops::thread_range;

namespace {

void relu_sq_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const Range r = thread_range(ggml_nelements(dst), ith, nth, CHANNEL_BLOCK);
    const float * x = f32(dst->src[0]);
    float * y = f32_mut(dst);
    for (int64_t i = r.begin; i < r.end; ++i) {
        const float p = ops::positive_part(x[i]);
        y[i] = p * p;
    }
}

void gated_residual_compute(ggml_tensor * dst, int ith, int nth, void * /*userdata*/) {
    const Range range = thread_range(ggml_nelements(dst), ith, nth, CHANNEL_BLOCK);
    const float * x = f32(dst->src[0]);
    const float * r = f32(dst->src[1]);
    const float * v = f32(dst->src[2]);
    float * y = f32_mut(dst);
    for (int64_t i = range.begin; i < range.end; ++i) y[i] = x[i] + sigmoid(r[i]) * v[i];
}

}  // namespace

ggml_tensor * relu_sq(ggml_context * ctx, ggml_tensor * x) {
    GGML_ASSERT(x->type == GGML_TYPE_F32 && ggml_is_contiguous(x));
    ggml_tensor * args[] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, 1, relu_sq_compute,
                          GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * gated_residual(ggml_context * ctx, ggml_tensor * x, ggml_tensor * r, ggml_tensor * v) {
    GGML_ASSERT(ggml_are_same_shape(x, r) && ggml_are_same_shape(x, v));
    GGML_ASSERT(ggml_is_contiguous(x) && ggml_is_contiguous(r) && ggml_is_contiguous(v));
    ggml_tensor * args[] = {x, r, v};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, x->ne[0], x->ne[1], x->ne[2], x->ne[3], args, 3,
                          gated_residual_compute, GGML_N_TASKS_MAX, nullptr);
}

RWKV_OPS_CLONES void exp_poly_array(const float * x, float * y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        y[i] = ops::exp_poly(x[i]);
    }
}

}  // namespace rwkv
