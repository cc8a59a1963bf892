// Streaming quantizer.  The input is loaded (and fully validated) as a Model,
// memory-mapped; each tensor is converted in chunks of rows and written right
// away, so peak memory stays near one chunk, not the model size.
#include "rwkv_quantize.h"

#include "rwkv_file.h"
#include "rwkv_model.h"

#include "ggml.h"
#include "gguf.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace rwkv {

namespace {

constexpr size_t CHUNK_FLOATS = size_t(4) << 20;  // rows converted at a time: about 16 MiB of f32

ggml_type ggml_type_of(rwkv_type t) {
    switch (t) {
        case RWKV_TYPE_FP32: return GGML_TYPE_F32;
        case RWKV_TYPE_FP16: return GGML_TYPE_F16;
        case RWKV_TYPE_Q8_0: return GGML_TYPE_Q8_0;
        case RWKV_TYPE_Q5_0: return GGML_TYPE_Q5_0;
        case RWKV_TYPE_Q5_1: return GGML_TYPE_Q5_1;
        case RWKV_TYPE_Q4_0: return GGML_TYPE_Q4_0;
        case RWKV_TYPE_Q4_1: return GGML_TYPE_Q4_1;
    }
    fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "unknown target type %d", static_cast<int>(t));
}

// Runs fn(row_begin, row_end) over [0, n_rows) split across n_threads.
template <typename Fn>
void parallel_rows(int64_t n_rows, uint32_t n_threads, Fn && fn) {
    const int64_t n = std::max<int64_t>(1, std::min<int64_t>(n_threads, n_rows));
    if (n == 1) {
        fn(0, n_rows);
        return;
    }
    std::vector<std::thread> workers;
    const int64_t per = (n_rows + n - 1) / n;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t r0 = i * per, r1 = std::min(n_rows, r0 + per);
        if (r0 < r1) workers.emplace_back([&fn, r0, r1] { fn(r0, r1); });
    }
    for (auto & w : workers) w.join();
}

// Rows [r0, r1) of src (any supported type) as f32 into dst.
void rows_to_f32(const ggml_tensor * src, int64_t r0, int64_t r1, float * dst) {
    const int64_t n = src->ne[0];
    const auto * base = static_cast<const uint8_t *>(src->data);
    if (src->type == GGML_TYPE_F32) {
        std::memcpy(dst, base + r0 * src->nb[1], (r1 - r0) * n * sizeof(float));
        return;
    }
    const ggml_type_traits * tr = ggml_get_type_traits(src->type);
    for (int64_t r = r0; r < r1; ++r) {
        tr->to_float(base + r * src->nb[1], dst + (r - r0) * n, n);
    }
}

// Converts rows [r0, r1) of f32 (row-major, n per row) into dst of type t.
void f32_to_type(const float * src, int64_t n_rows, int64_t n, ggml_type t, uint8_t * dst, uint32_t n_threads) {
    const size_t row_bytes = ggml_row_size(t, n);
    parallel_rows(n_rows, n_threads, [&](int64_t r0, int64_t r1) {
        if (t == GGML_TYPE_F32) {
            std::memcpy(dst + r0 * row_bytes, src + r0 * n, (r1 - r0) * row_bytes);
        } else if (t == GGML_TYPE_F16) {
            ggml_fp32_to_fp16_row(src + r0 * n, reinterpret_cast<ggml_fp16_t *>(dst + r0 * row_bytes), (r1 - r0) * n);
        } else {
            ggml_quantize_chunk(t, src + r0 * n, dst + r0 * row_bytes, 0, r1 - r0, n, nullptr);
        }
    });
}

void write_tensor(OutputFile & out, const ggml_tensor * src, ggml_type t, uint32_t n_threads) {
    const int64_t n = src->ne[0], n_rows = ggml_nrows(src);
    if (src->type == t) {  // same type: copy the bytes
        out.write(src->data, ggml_nbytes(src));
        return;
    }
    const int64_t rows_per_chunk = std::max<int64_t>(1, static_cast<int64_t>(CHUNK_FLOATS) / n);
    std::vector<float> f32(static_cast<size_t>(std::min(rows_per_chunk, n_rows) * n));
    std::vector<uint8_t> conv(ggml_row_size(t, n) * static_cast<size_t>(std::min(rows_per_chunk, n_rows)));
    for (int64_t r0 = 0; r0 < n_rows; r0 += rows_per_chunk) {
        const int64_t r1 = std::min(n_rows, r0 + rows_per_chunk);
        rows_to_f32(src, r0, r1, f32.data());
        f32_to_type(f32.data(), r1 - r0, n, t, conv.data(), n_threads);
        out.write(conv.data(), ggml_row_size(t, n) * static_cast<size_t>(r1 - r0));
    }
}

struct GgufDeleter {
    void operator()(gguf_context * g) const { gguf_free(g); }
};
struct GgmlDeleter {
    void operator()(ggml_context * c) const { ggml_free(c); }
};

}  // namespace

// The policy table (docs/QUANTIZATION.md):
//   role        FP32   FP16   Qx
//   VECTOR      F32    F32    F32     (layer norms, time_mix, time_first, time_decay)
//   MATRIX      F32    F16    Qx      (block matrices)
//   HEAD        F32    F16    Qx if params.quantize_head, else F16
//   EMBEDDING   F32    F16    Qx if params.quantize_emb, else F16
//   LOW_RANK    F32    F16    F16     (v6/v7 LoRA matrices: small, feed exponentials)
// A matrix whose rows are not a whole number of quantization blocks stays F16.
static ggml_type policy_type(const TensorEntry & e, rwkv_type target, const rwkv_quantize_params & params) {
    const ggml_type want = ggml_type_of(target);
    if (e.role == TensorRole::VECTOR) {
        return GGML_TYPE_F32;
    }
    if (want == GGML_TYPE_F32 || want == GGML_TYPE_F16) {
        return want;
    }
    const bool quantize = e.role == TensorRole::MATRIX || (e.role == TensorRole::HEAD && params.quantize_head) ||
                          (e.role == TensorRole::EMBEDDING && params.quantize_emb);
    if (!quantize || e.tensor->ne[0] % ggml_blck_size(want) != 0) {
        return GGML_TYPE_F16;
    }
    return want;
}

void quantize_rows(rwkv_type target, const float * src, int64_t n_rows, int64_t n_per_row, void * dst,
                   size_t dst_size, uint32_t n_threads) {
    const ggml_type t = ggml_type_of(target);
    if (n_rows <= 0 || n_per_row <= 0 || n_per_row % ggml_blck_size(t) != 0) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "cannot store %lld rows of %lld values as %s: the row length must "
             "be a positive multiple of %lld", static_cast<long long>(n_rows), static_cast<long long>(n_per_row),
             ggml_type_name(t), static_cast<long long>(ggml_blck_size(t)));
    }
    const size_t row_bytes = ggml_row_size(t, n_per_row);
    if (static_cast<uint64_t>(n_rows) > SIZE_MAX / row_bytes || row_bytes * static_cast<size_t>(n_rows) != dst_size) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "destination of %zu bytes, expected %zu rows of %zu bytes", dst_size,
             static_cast<size_t>(n_rows), row_bytes);
    }
    const uint32_t threads = n_threads != 0 ? n_threads : std::max(1u, std::thread::hardware_concurrency());
    f32_to_type(src, n_rows, n_per_row, t, static_cast<uint8_t *>(dst), threads);
}

void quantize_file(const std::string & in, const std::string & out_path, rwkv_type target,
                   const rwkv_quantize_params & params) {
    rwkv_model_params mp = default_model_params();
    mp.repack = false;  // the quantizer reads the file's tensors; a packed copy would only cost time and memory
    std::unique_ptr<Model> model = Model::load(in, mp);
    const ggml_type want = ggml_type_of(target);
    // Re-quantizing quantized weights compounds two rounding errors: refuse,
    // except for the same type (a copy) or a float target (exact dequantization).
    for (const TensorEntry & e : model->tensors()) {
        const ggml_type have = e.tensor->type;
        if (ggml_is_quantized(have) && ggml_is_quantized(want) && have != want) {
            fail(RWKV_STATUS_ERROR_UNSUPPORTED,
                 "'%s' is already quantized (tensor '%s' is %s); quantize from the FP32 or FP16 file instead",
                 in.c_str(), e.name.c_str(), ggml_type_name(have));
        }
    }
    const uint32_t n_threads = params.n_threads != 0 ? params.n_threads : std::max(1u, std::thread::hardware_concurrency());

    std::unique_ptr<gguf_context, GgufDeleter> meta(gguf_init_empty());
    gguf_set_kv(meta.get(), model->file().gguf());
    gguf_set_val_u32(meta.get(), "general.file_type", static_cast<uint32_t>(target));
    const size_t n_entries = model->tensors().size();
    ggml_init_params ip = {ggml_tensor_overhead() * (n_entries + 1), nullptr, true};
    std::unique_ptr<ggml_context, GgmlDeleter> tctx(ggml_init(ip));
    std::vector<ggml_type> types;
    uint64_t total = 0;
    for (const TensorEntry & e : model->tensors()) {
        const ggml_type t = policy_type(e, target, params);
        ggml_tensor * nt = ggml_new_tensor(tctx.get(), t, ggml_n_dims(e.tensor), e.tensor->ne);
        ggml_set_name(nt, e.name.c_str());
        gguf_add_tensor(meta.get(), nt);
        types.push_back(t);
        total += ggml_nbytes(e.tensor);
    }
    std::vector<uint8_t> header(gguf_get_meta_size(meta.get()));
    gguf_get_meta_data(meta.get(), header.data());
    const size_t alignment = gguf_get_alignment(meta.get());

    OutputFile out(out_path);
    out.write(header.data(), header.size());
    uint64_t done = 0;
    for (size_t i = 0; i < n_entries; ++i) {
        const TensorEntry & e = model->tensors()[i];
        write_tensor(out, e.tensor, types[i], n_threads);
        out.pad_to(alignment);
        done += ggml_nbytes(e.tensor);
        if (params.progress_callback != nullptr &&
            !params.progress_callback(static_cast<float>(static_cast<double>(done) / static_cast<double>(total)),
                                      params.progress_user_data)) {
            fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "quantization cancelled");
        }
    }
    out.commit();
}

}  // namespace rwkv
