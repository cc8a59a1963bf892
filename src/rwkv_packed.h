// Packed matrices: our own weight layout and matrix kernels for decode and
// prefill on x86-64 CPUs with AVX-512 VNNI (rwkv_packed_avx512.cpp) or AVX2
// (rwkv_packed_avx2.cpp: the same layout in 256-bit halves).
//
// ggml's matrix-vector kernels for 4/5-bit blocks run at about half the
// memory speed on 2 cores: each 32-weight block is unpacked, multiplied and
// scaled on its own.  Here 16 rows are interleaved so that one 512-bit
// VPDPBUSD multiplies 4 weights of each of the 16 rows by 4 broadcast
// activation bytes and accumulates 16 row sums at once; a block of 16 rows x
// 32 weights takes 8 of them plus one scale step.  The layout keeps ggml's
// bits exactly (the same quants and fp16 scales, regrouped), so results match
// ggml's up to float summation order and the activation's 8-bit rounding.
//
// Per group of 16 rows and per 32-column block b of a quantized matrix:
//   d [16] fp16 scales; m [16] fp16 minimums (Q4_1, Q5_1);
//   qs: the unsigned quants q (0..15, 0..31 or 0..255), as 8 lanes t of
//       64 bytes, byte 4r+i of lane t = q[row r][4t+i] (Q4 and Q5 types keep
//       lanes 2j and 2j+1 in one 64-byte vector: low and high nibbles);
//   qh: Q5 types, the fifth bit of lane t as one 64-bit mask (bit 4r+i).
// A weight is d*q + m (Q4_1, Q5_1) or d*(q - o), o = 8, 16, 128 (Q4_0, Q5_0,
// Q8_0; Q8_0 stores q + 128).  F16 matrices are interleaved too: per group,
// [K][16] halves, column k of the 16 rows in one 32-byte vector.
//
// The activation is quantized per column and 32-block like ggml's Q8_1:
// dx = max|x| / 127, xq = round(x / dx), sx = dx * sum(xq); then
//   y[r] = sum_b d[r,b] * dx[b] * dot(q[r,b], xq[b]) + m[r,b] * sx[b]
// with m = -o*d for the offset types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "ggml.h"

namespace rwkv {

constexpr int PACK_ROWS = 16;
constexpr int PACK_BLOCK = 32;

// Instruction sets of the packed kernels, in increasing order.
enum class PackedIsa { NONE, AVX2, AVX512_VNNI };

// The most capable kernels this process may use: the best the CPU has
// (checked at run time; the library itself is built for generic x86-64),
// capped by the debugging variable RWKV_CPP_PACKED_ISA=avx2|none if set.
// A model uses these or fewer (rwkv_model_params.packed_isa).
PackedIsa packed_isa();
bool packed_kernels_available();  // packed_isa() != NONE
// Whether this CPU can run the kernels of isa (whatever the cap).
bool cpu_runs(PackedIsa isa);
const char * packed_isa_name(PackedIsa isa);

// Whether a matrix of this type and shape can be packed.
bool packable(ggml_type type, int64_t n_cols);

// Memory for packed matrices, 64-byte aligned; null when out of memory.
// (Transparent huge pages were tried: 2-15% faster decode of 1.5B models,
// but loads of 1-3 s when the kernel must compact memory to find them.)
struct PackedFree {
    void operator()(uint8_t * p) const;
};
using PackedBuffer = std::unique_ptr<uint8_t, PackedFree>;
PackedBuffer allocate_packed(size_t bytes);

class PackedMatrix {
public:
    // Called with each span of the source rows once it has been packed.
    using Release = std::function<void(const uint8_t * begin, size_t bytes)>;

    // Bytes of the packed form of a [n_rows, n_cols] matrix of this type.
    static size_t packed_bytes(ggml_type type, int64_t n_rows, int64_t n_cols);

    // Packs a [n_rows, n_cols] matrix of ggml blocks (row-major, ggml layout)
    // into storage (packed_bytes of it, 64-byte aligned, owned by the caller
    // and outliving this object) or, when storage is null, into memory of
    // its own.  release (optional) lets the caller drop the source's pages
    // as packing goes.  kernels: the set its graph nodes run
    // (packed_mul_mat; cpu_runs(kernels) must hold).
    PackedMatrix(ggml_type type, int64_t n_rows, int64_t n_cols, const void * data, uint8_t * storage = nullptr,
                 const Release & release = {}, PackedIsa kernels = PackedIsa::NONE);

    // A matrix whose packed form already exists: packed_bytes(type, n_rows,
    // n_cols) bytes at packed (64-byte aligned; a packed-weight cache file,
    // rwkv_packed_cache.h), read in place and outliving this object.
    static std::unique_ptr<PackedMatrix> adopt(ggml_type type, int64_t n_rows, int64_t n_cols,
                                               const uint8_t * packed, PackedIsa kernels);

    ggml_type type() const { return type_; }
    PackedIsa kernels() const { return kernels_; }
    int64_t rows() const { return n_rows_; }
    int64_t cols() const { return n_cols_; }
    int64_t groups() const { return n_groups_; }
    size_t bytes() const { return n_groups_ * group_bytes_; }
    // Whether the kernel takes a quantized activation (quantize_blocks).
    bool quantized() const { return type_ != GGML_TYPE_F16; }

    // y[:, t] = W @ x[:, t] for t < T, rows of groups [g0, g1), with the
    // kernels of isa (cpu_runs(isa) must hold; NONE = multiply_ref) and the
    // naive reference of the same maths.  x: quantized columns
    // (quantize_blocks) for quantized types, floats for F16; y: [T][y_stride].
    void multiply(PackedIsa isa, const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                  int64_t g1) const;
    void multiply_ref(const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0, int64_t g1) const;

    // Region offsets inside one group (bytes), for the kernels.
    struct Layout {
        size_t d, m, qh, qs;
        size_t d_stride, qh_stride, qs_stride;  // bytes per block in each region
    };
    const Layout & layout() const { return lay_; }
    const uint8_t * group(int64_t g) const { return base_ + g * group_bytes_; }

private:
    // The checked shape and layout, nothing packed yet.
    PackedMatrix(ggml_type type, int64_t n_rows, int64_t n_cols, PackedIsa kernels);

    ggml_type type_;
    PackedIsa kernels_;
    int64_t n_rows_, n_cols_, n_groups_;
    size_t group_bytes_ = 0;
    Layout lay_{};
    PackedBuffer owned_;
    const uint8_t * base_ = nullptr;
};

// Bytes of one quantized activation column of n_cols values:
//   xq int8[n_cols], dx float[n_cols/32], sx float[n_cols/32].
size_t quantized_column_bytes(int64_t n_cols);

// Quantizes the activation blocks [i0, i1) of x ([T][x_stride] floats, n_cols
// used; block i is block i % (n_cols/32) of column i / (n_cols/32)) into out
// ([T][quantized_column_bytes] bytes), with the kernels of isa (NONE: the
// naive reference); every path gives the same bytes.
void quantize_blocks(const float * x, int64_t x_stride, int64_t n_cols, int64_t i0, int64_t i1, uint8_t * out,
                     PackedIsa isa);

// Graph node: y = W @ x for x [K, T] f32 (columns contiguous), with the
// kernels of W (W.kernels()); W must outlive the graph.  Quantized types add a node that quantizes x first (split over
// the threads, where every thread of the product needs all of it).
ggml_tensor * packed_mul_mat(ggml_context * ctx, const PackedMatrix & w, ggml_tensor * x);

// What packed_products applies to a product's rows once computed.
enum class PackedAct { NONE, TANH, SIGMOID, RELU_SQ };  // RELU_SQ: torch.relu(y) ** 2

// One product of packed_products: act(W @ x) for x f32 [W.cols(), T].
struct PackedProduct {
    const PackedMatrix * w;
    ggml_tensor * x;
    PackedAct act;
};

// The most products of one packed_products node: its sources (one per
// product) stay below ggml_custom_4d's GGML_MAX_SRC (10).
constexpr int PACKED_PRODUCTS_MAX = 8;

// Graph node: y_i = act_i(W_i @ x_i) for n products over the same T tokens
// (RWKV-7: r, k, v and the LoRA down projections, each from its own mixed
// input; RWKV-5/6: r, k, v, g and the decay LoRA; channel mixing: k and r),
// so that one barrier follows all of them instead of one each.  The
// threads split the row groups of all products by their bytes.  Returns the
// node (f32, product i's [rows_i, T] block contiguous at element
// sum_{j<i} rows_j * T) and sets blocks[i] to a view of block i.  Quantized
// W_i add a node that quantizes x_i first, as packed_mul_mat does; each
// block equals packed_mul_mat's result, then act_i.
ggml_tensor * packed_products(ggml_context * ctx, const PackedProduct * products, int n, ggml_tensor ** blocks);

}  // namespace rwkv
