#include "rwkv_testing.h"

#include "rwkv_common.h"
#include "rwkv_graph.h"
#include "rwkv_model.h"
#include "rwkv_packed.h"

#include "ggml-cpu.h"
#include "ggml.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace rwkv;

namespace {

rwkv_status multiply_ggml(ggml_type type, const std::vector<uint8_t> & q, int64_t rows, int64_t cols, const float * x,
                          int64_t n_tokens, float * y) {
    const size_t mem = q.size() + static_cast<size_t>((cols + rows) * n_tokens) * sizeof(float) + (16u << 20);
    ggml_init_params ip = {mem, nullptr, false};
    ggml_context * ctx = ggml_init(ip);
    if (ctx == nullptr) return RWKV_STATUS_ERROR_ALLOC;
    ggml_tensor * wt = ggml_new_tensor_2d(ctx, type, cols, rows);
    std::memcpy(wt->data, q.data(), q.size());
    ggml_tensor * xt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols, n_tokens);
    std::memcpy(xt->data, x, ggml_nbytes(xt));
    ggml_tensor * yt = ggml_mul_mat(ctx, wt, xt);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, yt);
    const ggml_status st = ggml_graph_compute_with_ctx(ctx, gf, 1);
    if (st == GGML_STATUS_SUCCESS) std::memcpy(y, yt->data, ggml_nbytes(yt));
    ggml_free(ctx);
    return st == GGML_STATUS_SUCCESS ? RWKV_STATUS_OK : RWKV_STATUS_ERROR_COMPUTE;
}

// The packed kernels of a test kernel set (GGML has none).
bool packed_isa_of(int kernels, PackedIsa & isa) {
    switch (kernels) {
        case RWKV_TESTING_REFERENCE: isa = PackedIsa::NONE; return true;
        case RWKV_TESTING_AVX2: isa = PackedIsa::AVX2; return cpu_runs(isa);
        case RWKV_TESTING_AVX512: isa = PackedIsa::AVX512_VNNI; return cpu_runs(isa);
        default: return false;
    }
}

}  // namespace

extern "C" {

int rwkv_testing_cpu_runs(int kernels) {
    PackedIsa isa;
    return kernels == RWKV_TESTING_GGML || packed_isa_of(kernels, isa) ? 1 : 0;
}

size_t rwkv_testing_quantized_column_bytes(int64_t cols) { return quantized_column_bytes(cols); }

rwkv_status rwkv_testing_quantize_activation(const float * x, int64_t cols, int64_t n_tokens, int kernels,
                                             uint8_t * out) {
    PackedIsa isa;
    if (x == nullptr || out == nullptr || cols <= 0 || cols % PACK_BLOCK != 0 || n_tokens <= 0 ||
        !packed_isa_of(kernels, isa)) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    quantize_blocks(x, cols, cols, 0, n_tokens * (cols / PACK_BLOCK), out, isa);
    return RWKV_STATUS_OK;
}

rwkv_status rwkv_testing_packed_matmul(int ggml_type_id, const float * w, int64_t rows, int64_t cols, const float * x,
                                       int64_t n_tokens, int mode, float * y, float * w_dequant) {
    const ggml_type type = static_cast<ggml_type>(ggml_type_id);
    PackedIsa isa = PackedIsa::NONE;
    if (w == nullptr || x == nullptr || y == nullptr || rows <= 0 || n_tokens <= 0 || !packable(type, cols) ||
        (mode != RWKV_TESTING_GGML && !packed_isa_of(mode, isa))) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    try {
        std::vector<uint8_t> q(ggml_row_size(type, cols) * rows);
        ggml_quantize_chunk(type, w, q.data(), 0, rows, cols, nullptr);
        if (w_dequant != nullptr) {
            ggml_get_type_traits(type)->to_float(q.data(), w_dequant, rows * cols);
        }
        if (mode == RWKV_TESTING_GGML) {
            return multiply_ggml(type, q, rows, cols, x, n_tokens, y);
        }
        const PackedMatrix pm(type, rows, cols, q.data());
        std::vector<uint8_t> xq;
        const void * xin = x;
        if (pm.quantized()) {
            xq.resize(quantized_column_bytes(cols) * n_tokens);
            quantize_blocks(x, cols, cols, 0, n_tokens * (cols / PACK_BLOCK), xq.data(), isa);
            xin = xq.data();
        }
        pm.multiply(isa, xin, n_tokens, y, rows, 0, pm.groups());
        return RWKV_STATUS_OK;
    } catch (const Error & e) {
        return e.status();
    } catch (const std::bad_alloc &) {
        return RWKV_STATUS_ERROR_ALLOC;
    }
}

size_t rwkv_testing_graph_node_names(const char * path, uint32_t n_tokens, int logits, char * buf, size_t size) {
    if (path == nullptr || n_tokens == 0 || logits < 0 || logits > 2) {
        return 0;
    }
    try {
        const std::unique_ptr<Model> model = Model::load(path, default_model_params());
        const size_t max_nodes = graph_max_nodes(*model);
        // the graph's nodes and the three inputs
        ggml_init_params ip = {ggml_tensor_overhead() * (max_nodes + 3) + ggml_graph_overhead_custom(max_nodes, false),
                               nullptr, /*no_alloc =*/ true};
        std::unique_ptr<ggml_context, decltype(&ggml_free)> ctx(ggml_init(ip), ggml_free);
        if (!ctx) return 0;
        GraphIO io;
        io.tokens = ggml_new_tensor_1d(ctx.get(), GGML_TYPE_I32, n_tokens);
        io.state_in = ggml_new_tensor_1d(ctx.get(), GGML_TYPE_F32, static_cast<int64_t>(model->state_len()));
        io.state_out = ggml_new_tensor_1d(ctx.get(), GGML_TYPE_F32, static_cast<int64_t>(model->state_len()));
        ggml_cgraph * gf = ggml_new_graph_custom(ctx.get(), max_nodes, false);
        const LogitsMode modes[] = {LogitsMode::NONE, LogitsMode::LAST, LogitsMode::ALL};
        build_graph(ctx.get(), gf, *model, io, modes[logits]);
        std::string names;
        for (int i = 0; i < ggml_graph_n_nodes(gf); ++i) {
            names += (i == 0 ? "" : "\n");
            names += ggml_get_name(ggml_graph_node(gf, i));
        }
        if (buf != nullptr && size > 0) {
            const size_t n = std::min(size - 1, names.size());
            std::memcpy(buf, names.data(), n);
            buf[n] = '\0';
        }
        return names.size() + 1;
    } catch (const std::exception &) {
        return 0;
    }
}

}  // extern "C"
