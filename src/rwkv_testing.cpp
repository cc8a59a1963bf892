#include "rwkv_testing.h"

#include "rwkv_common.h"
#include "rwkv_context.h"
#include "rwkv_graph.h"
#include "rwkv_model.h"
#include "rwkv_ops.h"
#include "rwkv_packed.h"
#include "rwkv_sampling.h"

#include "ggml-cpu.h"
#include "ggml.h"

#include <cmath>
#include <cstring>
#include <algorithm>
#include <initializer_list>
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


// ---- one custom op on caller arrays (rwkv_testing_run_op) ----------------

constexpr int OP_MAX_INPUTS = 16;
constexpr int64_t OP_MAX_SIZE = int64_t(1) << 12;  // per size argument: small buffers, no overflow
constexpr int OP_MAX_THREADS = 64;

// The shape of one input of an op ({D}, {D, T}, ...); optional inputs are
// given all together or not at all.
struct OpInput {
    int64_t ne[3];
    bool optional;
};

// The inputs of op, in the order of rwkv_testing.h; false for an unknown
// op or sizes the op refuses (its GGML_ASSERTs would abort instead).
bool op_inputs(int op, const rwkv_testing_op_args & a, std::vector<OpInput> & in) {
    const int64_t D = a.n_embed, T = a.n_tokens, N = a.head_size;
    const OpInput vec = {{D, 1, 1}, false}, cols = {{D, T, 1}, false};
    const bool heads_ok = a.n_head >= 1 && N >= 1 && a.n_head * N == D;
    const auto set = [&](std::initializer_list<OpInput> list) {
        in.clear();
        for (const OpInput & x : list) in.push_back(x);
    };
    const auto repeat = [&](const OpInput & x, int n) {
        for (int i = 0; i < n; ++i) in.push_back(x);
    };
    switch (op) {
        case RWKV_TESTING_OP_LN_SHIFT_MIX:
            set({cols, vec, vec, vec});
            repeat(vec, a.n_mix);
            return a.n_mix >= 1 && a.n_mix <= LN_SHIFT_MIX_MAX;
        case RWKV_TESTING_OP_SHIFT_MIX_WEIGHTED_SUM:
        case RWKV_TESTING_OP_SHIFT_MIX_ADD_DELTA:
            set({cols, vec});
            repeat(vec, a.n_mix);
            return a.n_mix >= 1 && a.n_mix <= SHIFT_MIX_MAX;
        case RWKV_TESTING_OP_SHIFT_MIX_LORA:
            set({cols, vec, {{D, T, SHIFT_MIX_LORA_N}, false}});
            repeat(vec, SHIFT_MIX_LORA_N);
            return true;
        case RWKV_TESTING_OP_WKV4_GATED: set({cols, cols, cols, vec, vec, {{3 * D, 1, 1}, false}}); return true;
        case RWKV_TESTING_OP_WKV5:
            set({cols, cols, cols, vec, {{D, T, 1}, true}, vec, vec, vec, {{D * N, 1, 1}, false}});
            return heads_ok;
        case RWKV_TESTING_OP_WKV7_PREPARE:
            set({cols, cols, cols, vec, vec, vec, {{D, T, 1}, true}, {{D, 1, 1}, true}, {{D, T, 1}, true}});
            return heads_ok;
        case RWKV_TESTING_OP_WKV7:
            set({cols, cols, vec, {{D, T, WKV7_BLOCKS}, false}, vec, vec, vec, {{D * N, 1, 1}, false}});
            return heads_ok;
        case RWKV_TESTING_OP_RELU_SQ: set({cols}); return true;
        case RWKV_TESTING_OP_GATED_RESIDUAL: set({cols, cols, cols}); return true;
        default: return false;
    }
}

// Length of the op's side output (the state it writes besides its result).
int64_t op_side_len(int op, int64_t D) {
    switch (op) {
        case RWKV_TESTING_OP_LN_SHIFT_MIX: return D;
        case RWKV_TESTING_OP_WKV4_GATED: return 3 * D;
        default: return 0;
    }
}

// Checks the arguments against the op's inputs: every required input given,
// the optional ones all or none, nothing past them.
bool op_args_valid(int op, const rwkv_testing_op_args & a, std::vector<OpInput> & in) {
    if (a.n_embed < 1 || a.n_embed > OP_MAX_SIZE || a.n_tokens < 1 || a.n_tokens > OP_MAX_SIZE ||
        a.n_head < 0 || a.n_head > OP_MAX_SIZE || a.head_size < 0 || a.head_size > OP_MAX_SIZE ||
        a.n_threads < 1 || a.n_threads > OP_MAX_THREADS || a.out == nullptr || !op_inputs(op, a, in) ||
        in.size() > OP_MAX_INPUTS) {
        return false;
    }
    int n_optional = 0, n_optional_given = 0;
    for (size_t i = 0; i < OP_MAX_INPUTS; ++i) {
        const bool given = a.inputs[i] != nullptr;
        if (i >= in.size()) {
            if (given) return false;
        } else if (in[i].optional) {
            n_optional += 1;
            n_optional_given += given ? 1 : 0;
        } else if (!given) {
            return false;
        }
    }
    const int64_t side = op_side_len(op, a.n_embed);
    return (n_optional_given == 0 || n_optional_given == n_optional) && a.side_len == side &&
           (side == 0 || a.side_out != nullptr);
}

// Adds the op's node on the input tensors (nullptr for an absent optional
// one) and the side output.
ggml_tensor * build_op(ggml_context * ctx, int op, const rwkv_testing_op_args & a, ggml_tensor * const * in,
                       ggml_tensor * side) {
    const int64_t H = a.n_head, N = a.head_size;
    switch (op) {
        case RWKV_TESTING_OP_LN_SHIFT_MIX:
            return ln_shift_mix(ctx, in[0], in[1], in[2], in[3], side, nullptr, in + 4, a.n_mix, &a.eps);
        case RWKV_TESTING_OP_SHIFT_MIX_WEIGHTED_SUM:
            return shift_mix(ctx, in[0], in[1], nullptr, in + 2, a.n_mix, MixForm::WeightedSum);
        case RWKV_TESTING_OP_SHIFT_MIX_ADD_DELTA:
            return shift_mix(ctx, in[0], in[1], nullptr, in + 2, a.n_mix, MixForm::AddDelta);
        case RWKV_TESTING_OP_SHIFT_MIX_LORA: return shift_mix_lora(ctx, in[0], in[1], nullptr, in[2], in + 3);
        case RWKV_TESTING_OP_WKV4_GATED:
            return wkv4_gated(ctx, in[0], in[1], in[2], in[3], in[4], in[5], side, nullptr);
        case RWKV_TESTING_OP_WKV5: {
            // v6: the graph adds time_decay to the LoRA term before the op
            const bool v6 = in[4] != nullptr;
            ggml_tensor * decay = v6 ? ggml_add(ctx, in[4], in[3]) : in[3];
            return wkv5(ctx, H, N, &a.eps, in[0], in[1], in[2], decay, v6, in[5], in[6], in[7], in[8], nullptr);
        }
        case RWKV_TESTING_OP_WKV7_PREPARE:
            return wkv7_prepare(ctx, H, N, in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8]);
        case RWKV_TESTING_OP_WKV7:
            return wkv7(ctx, H, N, &a.eps, in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], nullptr);
        case RWKV_TESTING_OP_RELU_SQ: return relu_sq(ctx, in[0]);
        default: return gated_residual(ctx, in[0], in[1], in[2]);
    }
}

// Copies the inputs into a ggml context of their own, builds and computes
// the one-op graph, and copies the result (and side output) back.
rwkv_status run_op(int op, const rwkv_testing_op_args & a, const std::vector<OpInput> & spec) {
    // the largest result: [D, T, SHIFT_MIX_MAX] or [D, T + N]
    const int64_t D = a.n_embed, T = a.n_tokens;
    size_t floats = static_cast<size_t>(D * (T * SHIFT_MIX_MAX + a.head_size) + a.side_len);
    for (const OpInput & s : spec) floats += static_cast<size_t>(s.ne[0] * s.ne[1] * s.ne[2]);
    const size_t mem = floats * sizeof(float) + (OP_MAX_INPUTS + 8) * ggml_tensor_overhead() +
                       ggml_graph_overhead() + (1u << 20);
    ggml_init_params ip = {mem, nullptr, false};
    ggml_context * ctx = ggml_init(ip);
    if (ctx == nullptr) return RWKV_STATUS_ERROR_ALLOC;
    ggml_tensor * in[OP_MAX_INPUTS] = {};
    for (size_t i = 0; i < spec.size(); ++i) {
        if (a.inputs[i] == nullptr) continue;
        in[i] = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, spec[i].ne[0], spec[i].ne[1], spec[i].ne[2]);
        std::memcpy(in[i]->data, a.inputs[i], ggml_nbytes(in[i]));
    }
    ggml_tensor * side = a.side_len > 0 ? ggml_new_tensor_1d(ctx, GGML_TYPE_F32, a.side_len) : nullptr;
    ggml_tensor * out = build_op(ctx, op, a, in, side);
    rwkv_status status = RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    if (ggml_nelements(out) == a.out_len) {
        ggml_cgraph * gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, out);
        status = ggml_graph_compute_with_ctx(ctx, gf, a.n_threads) == GGML_STATUS_SUCCESS ? RWKV_STATUS_OK
                                                                                            : RWKV_STATUS_ERROR_COMPUTE;
    }
    if (status == RWKV_STATUS_OK) {
        std::memcpy(a.out, out->data, ggml_nbytes(out));
        if (side != nullptr) std::memcpy(a.side_out, side->data, ggml_nbytes(side));
    }
    ggml_free(ctx);
    return status;
}

// rwkv_testing_packed_products once its arguments are checked: the packed
// matrices (with the kernels of isa), the inputs and one graph node.
rwkv_status run_packed_products(ggml_type type, int n, const float * const * w, const int64_t * rows,
                                const int64_t * cols, const float * const * x, const int32_t * act, int64_t T,
                                PackedIsa isa, int n_threads, float * y) {
    std::vector<std::unique_ptr<PackedMatrix>> mats;
    size_t floats = 0;
    for (int i = 0; i < n; ++i) {
        std::vector<uint8_t> q(ggml_row_size(type, cols[i]) * rows[i]);
        ggml_quantize_chunk(type, w[i], q.data(), 0, rows[i], cols[i], nullptr);
        mats.emplace_back(new PackedMatrix(type, rows[i], cols[i], q.data(), nullptr, {}, isa));
        floats += static_cast<size_t>((rows[i] + cols[i]) * T) + quantized_column_bytes(cols[i]) * T;
    }
    ggml_init_params ip = {floats * sizeof(float) + (4 * PACKED_PRODUCTS_MAX + 8) * ggml_tensor_overhead() +
                               ggml_graph_overhead() + (1u << 20),
                           nullptr, false};
    ggml_context * ctx = ggml_init(ip);
    if (ctx == nullptr) return RWKV_STATUS_ERROR_ALLOC;
    PackedProduct products[PACKED_PRODUCTS_MAX];
    for (int i = 0; i < n; ++i) {
        ggml_tensor * xi = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, cols[i], T);
        std::memcpy(xi->data, x[i], ggml_nbytes(xi));
        products[i] = {mats[i].get(), xi, static_cast<PackedAct>(act[i])};
    }
    ggml_tensor * blocks[PACKED_PRODUCTS_MAX];
    ggml_tensor * out = packed_products(ctx, products, n, blocks);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    const bool ok = ggml_graph_compute_with_ctx(ctx, gf, n_threads) == GGML_STATUS_SUCCESS;
    if (ok) std::memcpy(y, out->data, ggml_nbytes(out));
    ggml_free(ctx);
    return ok ? RWKV_STATUS_OK : RWKV_STATUS_ERROR_COMPUTE;
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

rwkv_status rwkv_testing_packed_products(int ggml_type_id, int n, const float * const * w, const int64_t * rows,
                                         const int64_t * cols, const float * const * x, const int32_t * act,
                                         int64_t n_tokens, int kernels, int n_threads, float * y) {
    const ggml_type type = static_cast<ggml_type>(ggml_type_id);
    PackedIsa isa = PackedIsa::NONE;
    if (n < 1 || n > PACKED_PRODUCTS_MAX || w == nullptr || rows == nullptr || cols == nullptr || x == nullptr ||
        act == nullptr || y == nullptr || n_tokens <= 0 || n_threads < 1 || n_threads > OP_MAX_THREADS ||
        kernels == RWKV_TESTING_GGML || !packed_isa_of(kernels, isa)) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    for (int i = 0; i < n; ++i) {
        if (w[i] == nullptr || x[i] == nullptr || rows[i] <= 0 || !packable(type, cols[i]) || act[i] < 0 ||
            act[i] > static_cast<int32_t>(PackedAct::RELU_SQ)) {
            return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
        }
    }
    try {
        return run_packed_products(type, n, w, rows, cols, x, act, n_tokens, isa, n_threads, y);
    } catch (const Error & e) {
        return e.status();
    } catch (const std::bad_alloc &) {
        return RWKV_STATUS_ERROR_ALLOC;
    }
}

rwkv_status rwkv_testing_run_op(int op, const rwkv_testing_op_args * args) {
    std::vector<OpInput> spec;
    if (args == nullptr || !op_args_valid(op, *args, spec)) {
        return RWKV_STATUS_ERROR_INVALID_ARGUMENT;
    }
    try {
        return run_op(op, *args, spec);
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
        // the graph's nodes and its inputs
        ggml_init_params ip = {ggml_tensor_overhead() * (max_nodes + GRAPH_IO_TENSORS) +
                                   ggml_graph_overhead_custom(max_nodes, false),
                               nullptr, /*no_alloc =*/ true};
        std::unique_ptr<ggml_context, decltype(&ggml_free)> ctx(ggml_init(ip), ggml_free);
        if (!ctx) return 0;
        GraphIO io = new_graph_io(ctx.get(), *model, n_tokens, 1);
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

uint64_t rwkv_testing_batch_graphs_built(const char * path, uint32_t max_chunk_tokens, const uint32_t * n_seqs,
                                         size_t n_batches, const uint32_t * lengths) {
    if (path == nullptr || n_seqs == nullptr || lengths == nullptr) {
        return 0;
    }
    try {
        const std::unique_ptr<Model> model = Model::load(path, default_model_params());
        rwkv_context_params params = default_context_params();
        params.n_threads = 1;
        params.max_chunk_tokens = max_chunk_tokens;
        Context ctx(*model, params);
        const size_t n_state = model->state_len(), n_vocab = model->hparams().n_vocab;
        for (size_t b = 0; b < n_batches; ++b) {
            const size_t n = n_seqs[b];
            std::vector<std::vector<uint32_t>> tokens(n);
            std::vector<float> states(n * n_state), logits(n * n_vocab);
            std::vector<rwkv_batch_seq> seqs(n);
            for (size_t s = 0; s < n; ++s) {
                tokens[s].assign(*lengths++, 0);
                seqs[s] = {tokens[s].data(), tokens[s].size(), nullptr, states.data() + s * n_state,
                           logits.data() + s * n_vocab, n_vocab};
            }
            ctx.eval_batch(seqs.data(), n, n_state, false);
        }
        return ctx.graphs_built();
    } catch (const std::exception &) {
        return 0;
    }
}

double rwkv_testing_top_p_cutoff(const double * probs, int64_t n, double top_p, int sorted) {
    if (probs == nullptr || n < 1) {
        return std::nan("");
    }
    TopPScratch scratch;
    return sorted ? top_p_cutoff_sorted(probs, n, top_p) : top_p_cutoff(probs, n, top_p, scratch);
}

void rwkv_testing_exp_poly(const float * x, float * y, int64_t n) {
    if (x != nullptr && y != nullptr && n > 0) {
        rwkv::exp_poly_array(x, y, n);
    }
}

}  // extern "C"
