// AVX-512 VNNI kernels of the packed matrices (layout and maths in
// rwkv_packed.h; the naive reference is PackedMatrix::multiply_ref).
#include "rwkv_packed_kernels.h"

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)

#    include <immintrin.h>

#    define RWKV_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))
// The accumulators must stay in registers: unroll the short fixed loops.
#    define RWKV_UNROLL _Pragma("GCC unroll 16")

namespace rwkv {
namespace packed {

namespace {

RWKV_AVX512 void quantize_block(const float * x, int8_t * q, float * dx, float * sx) {
    const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const float d = amax / 127.0f;
    const __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    // cvtps_epi32 rounds to nearest even, as nearbyint in the reference
    const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, id));
    const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, id));
    _mm_storeu_si128(reinterpret_cast<__m128i *>(q), _mm512_cvtepi32_epi8(qa));
    _mm_storeu_si128(reinterpret_cast<__m128i *>(q + 16), _mm512_cvtepi32_epi8(qb));
    *dx = d;
    *sx = d * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
}

// Four activation bytes of lane t, broadcast to the 16 row lanes.
RWKV_AVX512 inline __m512i xlane(const int8_t * xq, int t) { return _mm512_set1_epi32(lane_word(xq, t)); }

// Block b of a group unpacked into 8 lanes of unsigned bytes.
template <ggml_type TYPE>
RWKV_AVX512 inline void unpack_lanes(const uint8_t * grp, const PackedMatrix::Layout & L, int64_t b, __m512i * w) {
    using ti = BlockTraits<TYPE>;
    const uint8_t * qs = grp + L.qs + b * L.qs_stride;
    if constexpr (ti::eight_bit) {
        RWKV_UNROLL
        for (int t = 0; t < 8; ++t) w[t] = _mm512_loadu_si512(qs + 64 * t);
    } else {
        const __m512i low = _mm512_set1_epi8(0x0F);
        RWKV_UNROLL
        for (int j = 0; j < 4; ++j) {
            const __m512i p = _mm512_loadu_si512(qs + 64 * j);
            w[2 * j] = _mm512_and_si512(p, low);
            w[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low);
        }
        if constexpr (ti::has_qh) {
            const uint8_t * qh = grp + L.qh + b * L.qh_stride;
            const __m512i fifth = _mm512_set1_epi8(0x10);
            RWKV_UNROLL
            for (int t = 0; t < 8; ++t) {
                uint64_t bits;
                std::memcpy(&bits, qh + 8 * t, 8);
                w[t] = _mm512_mask_add_epi8(w[t], _cvtu64_mask64(bits), w[t], fifth);
            }
        }
    }
}

// Software prefetch (prefetch_block, prefetch_blocks<TYPE>() ahead)
// measured side by side (2 threads, 5 processes each): 430M Q4_0 10.5 -> 8.6
// ms/token, Q5_1 11.5 -> 10.3, 1.5B Q4_0 33.3 -> 26.2; Q8_0 within the noise
// (11.1 vs 11.4).  F16 showed no gain and goes without.

// Prefetch helpers must be inlined: GCC deems a function that only
// prefetches free of side effects and deletes calls to it.

// TT activation columns times one group of 16 rows; acc[tt] = 16 outputs.
template <ggml_type TYPE, int TT>
RWKV_AVX512 void quant_group(const uint8_t * grp, const PackedMatrix::Layout & L, int64_t nb, const QColumn * x,
                             __m512 * acc) {
    constexpr bool has_m = BlockTraits<TYPE>::has_m;
    constexpr bool has_qh = BlockTraits<TYPE>::has_qh;
    constexpr float offset = BlockTraits<TYPE>::offset;
    RWKV_UNROLL
    for (int tt = 0; tt < TT; ++tt) acc[tt] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        prefetch_block<TYPE>(grp, L, b + prefetch_blocks<TYPE>());
        __m512i w[8];
        unpack_lanes<TYPE>(grp, L, b, w);
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(grp + L.d + b * 32)));
        __m512 m = _mm512_setzero_ps();
        if constexpr (has_m) {
            m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(grp + L.m + b * 32)));
        }
        RWKV_UNROLL
        for (int tt = 0; tt < TT; ++tt) {
            const int8_t * xq = x[tt].q + b * PACK_BLOCK;
            __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
            RWKV_UNROLL
            for (int t = 0; t < 8; t += 2) {
                s0 = _mm512_dpbusd_epi32(s0, w[t], xlane(xq, t));
                s1 = _mm512_dpbusd_epi32(s1, w[t + 1], xlane(xq, t + 1));
            }
            const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            const __m512 dx = _mm512_set1_ps(x[tt].dx[b]);
            if constexpr (has_m) {
                acc[tt] = _mm512_fmadd_ps(d, _mm512_mul_ps(dot, dx), acc[tt]);
                acc[tt] = _mm512_fmadd_ps(m, _mm512_set1_ps(x[tt].sx[b]), acc[tt]);
            } else {
                const __m512 corr = _mm512_set1_ps(-offset * x[tt].sx[b]);
                acc[tt] = _mm512_fmadd_ps(d, _mm512_fmadd_ps(dot, dx, corr), acc[tt]);
            }
        }
    }
}

// TT float columns times one F16 group ([K][16] halves).  Every column sums
// in the same U chains whatever TT is, so a column's result does not depend
// on how the columns were tiled (sequence mode = token-by-token mode).
template <int TT>
RWKV_AVX512 void f16_group(const uint8_t * grp, int64_t K, const float * const * x, __m512 * acc) {
    constexpr int U = 4;  // independent FMA chains per column (K % 32 == 0)
    __m512 a[TT][U];
    RWKV_UNROLL
    for (int tt = 0; tt < TT; ++tt)
        RWKV_UNROLL
        for (int u = 0; u < U; ++u) a[tt][u] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += U) {
        RWKV_UNROLL
        for (int u = 0; u < U; ++u) {
            const __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(grp + (k + u) * 32)));
            RWKV_UNROLL
            for (int tt = 0; tt < TT; ++tt) a[tt][u] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[tt][k + u]), a[tt][u]);
        }
    }
    RWKV_UNROLL
    for (int tt = 0; tt < TT; ++tt) {
        acc[tt] = _mm512_add_ps(_mm512_add_ps(a[tt][0], a[tt][1]), _mm512_add_ps(a[tt][2], a[tt][3]));
    }
}

RWKV_AVX512 void store_rows(float * y, const __m512 & v, int n) {
    _mm512_mask_storeu_ps(y, static_cast<__mmask16>((1u << n) - 1u), v);
}

// Columns [t0, t0 + TT) times groups [g0, g1).
template <ggml_type TYPE, int TT>
RWKV_AVX512 void quant_tile(const PackedMatrix & w, const uint8_t * x, int64_t t0, float * y, int64_t y_stride,
                            int64_t g0, int64_t g1) {
    const size_t col_bytes = quantized_column_bytes(w.cols());
    QColumn cols[TT];
    for (int tt = 0; tt < TT; ++tt) cols[tt] = qcolumn(x + (t0 + tt) * col_bytes, w.cols());
    const int64_t nb = w.cols() / PACK_BLOCK;
    for (int64_t g = g0; g < g1; ++g) {
        __m512 acc[TT];
        quant_group<TYPE, TT>(w.group(g), w.layout(), nb, cols, acc);
        const int n = static_cast<int>(std::min<int64_t>(PACK_ROWS, w.rows() - g * PACK_ROWS));
        for (int tt = 0; tt < TT; ++tt) store_rows(y + (t0 + tt) * y_stride + g * PACK_ROWS, acc[tt], n);
    }
}

template <int TT>
RWKV_AVX512 void f16_tile(const PackedMatrix & w, const float * x, int64_t t0, float * y, int64_t y_stride,
                          int64_t g0, int64_t g1) {
    const float * cols[TT];
    for (int tt = 0; tt < TT; ++tt) cols[tt] = x + (t0 + tt) * w.cols();
    for (int64_t g = g0; g < g1; ++g) {
        __m512 acc[TT];
        f16_group<TT>(w.group(g), w.cols(), cols, acc);
        const int n = static_cast<int>(std::min<int64_t>(PACK_ROWS, w.rows() - g * PACK_ROWS));
        for (int tt = 0; tt < TT; ++tt) store_rows(y + (t0 + tt) * y_stride + g * PACK_ROWS, acc[tt], n);
    }
}

// Quantized matrices: columns in tiles of 8 (the unpacked weights of a block
// serve 8 columns; 8 accumulators fit beside them: batched decode of the
// 169M RWKV-4 Q5_1 at 32 sequences 66.5 -> 62 ms, 1 thread); F16 in tiles of
// 4 (16 accumulators of 4 chains; tiles of 6 measured slower, 67-69 ms).
// Both cache-blocked (for_each_block).
struct Kernels {
    template <ggml_type TYPE>
    static void quant(const PackedMatrix & w, const uint8_t * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                      int64_t g1) {
        for_each_block<8>(w, quantized_column_bytes(w.cols()), T, g0, g1, [&](auto tt, int64_t t0, int64_t ga, int64_t gb) {
            quant_tile<TYPE, decltype(tt)::value>(w, x, t0, y, y_stride, ga, gb);
        });
    }

    static void f16(const PackedMatrix & w, const float * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                    int64_t g1) {
        for_each_block<4>(w, w.cols() * sizeof(float), T, g0, g1, [&](auto tt, int64_t t0, int64_t ga, int64_t gb) {
            f16_tile<decltype(tt)::value>(w, x, t0, y, y_stride, ga, gb);
        });
    }
};

}  // namespace

void quantize_block_avx512(const float * x, int8_t * q, float * dx, float * sx) { quantize_block(x, q, dx, sx); }

void multiply_avx512(const PackedMatrix & w, const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                     int64_t g1) {
    multiply_by_type<Kernels>(w, x, T, y, y_stride, g0, g1);
}

}  // namespace packed
}  // namespace rwkv

#else  // not x86-64: never called (packed_isa() is NONE)

namespace rwkv {
namespace packed {
void quantize_block_avx512(const float *, int8_t *, float *, float *) {}
void multiply_avx512(const PackedMatrix &, const void *, int64_t, float *, int64_t, int64_t, int64_t) {}
}  // namespace packed
}  // namespace rwkv

#endif
