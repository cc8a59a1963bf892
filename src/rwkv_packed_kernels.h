// The per-instruction-set kernels of the packed matrices (rwkv_packed.h).
// Each kernel file is compiled for generic x86-64 and marks its functions
// with a target attribute (never per-file -m flags: inline functions of
// shared headers compiled with them could be linked into generic code), so
// one library runs on every CPU and picks its kernels at run time.
#pragma once

#include "rwkv_packed.h"

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>

namespace rwkv {
namespace packed {

// What a block type stores, in the terms of rwkv_packed.h: a weight is
// d*q + m (has_m) or d*(q - offset).
template <ggml_type TYPE>
struct BlockTraits {
    static constexpr bool has_m = TYPE == GGML_TYPE_Q4_1 || TYPE == GGML_TYPE_Q5_1;
    static constexpr bool has_qh = TYPE == GGML_TYPE_Q5_0 || TYPE == GGML_TYPE_Q5_1;
    static constexpr bool eight_bit = TYPE == GGML_TYPE_Q8_0;
    static constexpr float offset = TYPE == GGML_TYPE_Q4_0   ? 8.0f
                                    : TYPE == GGML_TYPE_Q5_0 ? 16.0f
                                    : TYPE == GGML_TYPE_Q8_0 ? 128.0f
                                                             : 0.0f;
};

// Software prefetch distance of the quantized kernels: this many bytes of
// quants ahead (16 blocks of Q4/Q5, 8 of Q8_0).  Decode streams hundreds of
// short weight runs per token, and at the start of each the hardware
// prefetcher is still learning; measured in rwkv_packed_avx512.cpp.
constexpr int64_t PREFETCH_QUANT_BYTES = 4096;

template <ggml_type TYPE>
constexpr int64_t prefetch_blocks() {
    return PREFETCH_QUANT_BYTES / (BlockTraits<TYPE>::eight_bit ? 512 : 256);
}

// Prefetch helpers must be inlined: GCC deems a function that only
// prefetches free of side effects and deletes calls to it.
#define RWKV_PREFETCH_HELPER inline __attribute__((always_inline))

RWKV_PREFETCH_HELPER void prefetch_line(const uint8_t * p) { __builtin_prefetch(p, 0, 3); }

// Block b of a packed group (reads past the group's end are harmless:
// prefetches never fault).
template <ggml_type TYPE>
RWKV_PREFETCH_HELPER void prefetch_block(const uint8_t * grp, const PackedMatrix::Layout & L, int64_t b) {
    using ti = BlockTraits<TYPE>;
    constexpr int qs_lines = ti::eight_bit ? 8 : 4;
    const uint8_t * qs = grp + L.qs + b * (64 * qs_lines);
    for (int i = 0; i < qs_lines; ++i) prefetch_line(qs + 64 * i);
    if (b % 2 == 0) {  // 32-byte scales: one line per two blocks
        prefetch_line(grp + L.d + b * 32);
        if (ti::has_m) prefetch_line(grp + L.m + b * 32);
    }
    if (ti::has_qh) prefetch_line(grp + L.qh + b * 64);
}

// Pointers into one quantized activation column (quantize_blocks).
struct QColumn {
    const int8_t * q;
    const float * dx;
    const float * sx;
};

inline QColumn qcolumn(const uint8_t * base, int64_t n_cols) {
    const int64_t nb = n_cols / PACK_BLOCK;
    const float * dx = reinterpret_cast<const float *>(base + n_cols);
    return {reinterpret_cast<const int8_t *>(base), dx, dx + nb};
}

// The four activation bytes of lane t (columns 4t..4t+3 of a block) as one
// 32-bit word, for broadcasting.
inline int32_t lane_word(const int8_t * xq, int t) {
    int32_t v;
    std::memcpy(&v, xq + 4 * t, 4);
    return v;
}

// Columns [t, T) in tiles of MAX columns, the rest in tiles of MAX/2, ...:
// tile(std::integral_constant<int, TT>{}, t0) for each.
template <int MAX, class Tile>
void for_each_tile(int64_t t, int64_t T, Tile && tile) {
    for (; t + MAX <= T; t += MAX) tile(std::integral_constant<int, MAX>{}, t);
    if constexpr (MAX > 1) for_each_tile<MAX / 2>(t, T, tile);
}

// Cache blocking of a product over many columns (prefill, batches): the
// columns in chunks whose activations stay in L2, and within a chunk the row
// groups in blocks whose weights stay in L1, each block multiplied with every
// column tile of the chunk before the next block is read.  Without it, each
// tile of MAX columns streamed the whole matrix from memory again.  A
// column's sums do not depend on the tiling or the order of the blocks, so
// the results are the bits of the unblocked loop.
constexpr size_t BLOCK_WEIGHT_BYTES = 32 * 1024;    // about L1d
constexpr size_t CHUNK_COLUMN_BYTES = 256 * 1024;   // well inside L2

// tile(std::integral_constant<int, TT>{}, t0, ga, gb) for every tile of
// columns [0, T) and block of groups [ga, gb) within [g0, g1).
template <int MAX, class Tile>
void for_each_block(const PackedMatrix & w, size_t column_bytes, int64_t T, int64_t g0, int64_t g1, Tile && tile) {
    const size_t group_bytes = w.bytes() / static_cast<size_t>(std::max<int64_t>(1, w.groups()));
    const int64_t per_block = std::max<int64_t>(1, static_cast<int64_t>(BLOCK_WEIGHT_BYTES / group_bytes));
    const int64_t per_chunk = std::max<int64_t>(MAX, static_cast<int64_t>(CHUNK_COLUMN_BYTES / column_bytes) / MAX * MAX);
    for (int64_t c0 = 0; c0 < T; c0 += per_chunk) {
        const int64_t c1 = std::min(T, c0 + per_chunk);
        for (int64_t ga = g0; ga < g1; ga += per_block) {
            const int64_t gb = std::min(g1, ga + per_block);
            for_each_tile<MAX>(c0, c1, [&](auto tt, int64_t t0) { tile(tt, t0, ga, gb); });
        }
    }
}

// The switch on the block type, shared by the instruction sets: Kernels has
//   template <ggml_type TYPE> static void quant(w, xq, T, y, y_stride, g0, g1);
//   static void f16(w, xf, T, y, y_stride, g0, g1);
template <class Kernels>
void multiply_by_type(const PackedMatrix & w, const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                      int64_t g1) {
    const uint8_t * xq = static_cast<const uint8_t *>(x);
    switch (w.type()) {
        case GGML_TYPE_F16: Kernels::f16(w, static_cast<const float *>(x), T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q4_0: Kernels::template quant<GGML_TYPE_Q4_0>(w, xq, T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q4_1: Kernels::template quant<GGML_TYPE_Q4_1>(w, xq, T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q5_0: Kernels::template quant<GGML_TYPE_Q5_0>(w, xq, T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q5_1: Kernels::template quant<GGML_TYPE_Q5_1>(w, xq, T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q8_0: Kernels::template quant<GGML_TYPE_Q8_0>(w, xq, T, y, y_stride, g0, g1); return;
        default: return;
    }
}

// y = W @ x for columns [0, T) and row groups [g0, g1), as
// PackedMatrix::multiply; only call when the CPU has the instruction set.
void multiply_avx512(const PackedMatrix & w, const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                     int64_t g1);
void multiply_avx2(const PackedMatrix & w, const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                   int64_t g1);

// One activation block of 32 values, byte-identical to the reference
// (quantize_blocks).
void quantize_block_avx512(const float * x, int8_t * q, float * dx, float * sx);
void quantize_block_avx2(const float * x, int8_t * q, float * dx, float * sx);

}  // namespace packed
}  // namespace rwkv
