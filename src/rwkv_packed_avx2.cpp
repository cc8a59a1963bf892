// AVX2 kernels of the packed matrices, for x86-64 CPUs without AVX-512 VNNI
// (most laptops).  The layout is the AVX-512 one (rwkv_packed.h) read in
// 256-bit halves: rows 0-7 of a group, then rows 8-15.  Without VPDPBUSD the
// byte products go through VPMADDUBSW (u8 x s8 -> pairs summed in saturating
// i16) and VPMADDWD; the naive reference is PackedMatrix::multiply_ref.
#include "rwkv_packed_kernels.h"

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)

#    include <immintrin.h>

#    define RWKV_AVX2 __attribute__((target("avx2,fma,f16c")))
#    define RWKV_UNROLL _Pragma("GCC unroll 16")

namespace rwkv {
namespace packed {

namespace {

constexpr int HALF_ROWS = 8;

RWKV_AVX2 inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

RWKV_AVX2 inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

RWKV_AVX2 void quantize_block(const float * x, int8_t * q, float * dx, float * sx) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    const float d = hmax(amax) / 127.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    __m256i r[4];
    for (int i = 0; i < 4; ++i) r[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));  // nearest even
    // i32 -> i8 (values within [-127, 127]); packs work per 128-bit lane, the
    // permutation restores the order.
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(q),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    *dx = d;
    *sx = d * static_cast<float>(hsum(_mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]))));
}

// 32 bits -> 32 bytes, byte j = 0x10 where bit j is set.
RWKV_AVX2 inline __m256i fifth_bits(uint32_t bits) {
    const __m256i spread = _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL, 0x0303030303030303LL);
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int32_t>(bits)), spread);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// Block b, half h (rows 8h..8h+7) of a group as 8 lanes of unsigned bytes.
template <ggml_type TYPE>
RWKV_AVX2 inline void unpack_lanes(const uint8_t * grp, const PackedMatrix::Layout & L, int64_t b, int h,
                                   __m256i * w) {
    using ti = BlockTraits<TYPE>;
    const uint8_t * qs = grp + L.qs + b * L.qs_stride + 32 * h;
    if constexpr (ti::eight_bit) {
        RWKV_UNROLL
        for (int t = 0; t < 8; ++t) w[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(qs + 64 * t));
    } else {
        const __m256i low = _mm256_set1_epi8(0x0F);
        RWKV_UNROLL
        for (int j = 0; j < 4; ++j) {
            const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(qs + 64 * j));
            w[2 * j] = _mm256_and_si256(p, low);
            w[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(p, 4), low);
        }
        if constexpr (ti::has_qh) {
            const uint8_t * qh = grp + L.qh + b * L.qh_stride + 4 * h;
            RWKV_UNROLL
            for (int t = 0; t < 8; ++t) {
                uint32_t bits;
                std::memcpy(&bits, qh + 8 * t, 4);
                w[t] = _mm256_or_si256(w[t], fifth_bits(bits));
            }
        }
    }
}

// Sum over the 8 lanes of w[t] . x[lane t]: one i32 per row of the half.
// Q4/Q5 quants are at most 31, so a pair of products is at most 7874 and
// four maddubs results add up in i16 without saturating.  Q8_0 quants (up to
// 255) would saturate: the dot is taken with the signed quants q - 128
// instead (sign trick), so it needs no offset correction.
template <ggml_type TYPE>
RWKV_AVX2 inline __m256i dot_lanes(const __m256i * w, const int8_t * xq) {
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (BlockTraits<TYPE>::eight_bit) {
        const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
        __m256i s = _mm256_setzero_si256();
        RWKV_UNROLL
        for (int t = 0; t < 8; ++t) {
            const __m256i ws = _mm256_xor_si256(w[t], flip);  // q back to signed, |q| <= 127
            const __m256i xv = _mm256_set1_epi32(lane_word(xq, t));
            const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(xv, ws));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
        }
        return s;
    } else {
        __m256i half[2];
        RWKV_UNROLL
        for (int k = 0; k < 2; ++k) {
            __m256i p = _mm256_maddubs_epi16(w[4 * k], _mm256_set1_epi32(lane_word(xq, 4 * k)));
            RWKV_UNROLL
            for (int t = 4 * k + 1; t < 4 * k + 4; ++t) {
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[t], _mm256_set1_epi32(lane_word(xq, t))));
            }
            half[k] = _mm256_madd_epi16(p, ones);
        }
        return _mm256_add_epi32(half[0], half[1]);
    }
}

// Software prefetch as in the AVX-512 kernels (which see).  Here it is what
// makes the kernels beat ggml's for decode (430M, 2 threads, this machine:
// Q8_0 14.8 -> 10.7 ms/token against ggml's 13.3).

// TT columns times one group, both halves per block (each cache line of the
// block is read once); acc[h][tt] = 8 outputs of half h.
template <ggml_type TYPE, int TT>
RWKV_AVX2 void quant_group(const uint8_t * grp, const PackedMatrix::Layout & L, int64_t nb, const QColumn * x,
                           __m256 (*acc)[TT]) {
    using ti = BlockTraits<TYPE>;
    constexpr float offset = ti::eight_bit ? 0.0f : ti::offset;  // see dot_lanes
    for (int h = 0; h < 2; ++h)
        for (int tt = 0; tt < TT; ++tt) acc[h][tt] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        prefetch_block<TYPE>(grp, L, b + prefetch_blocks<TYPE>());
        RWKV_UNROLL
        for (int h = 0; h < 2; ++h) {
            __m256i w[8];
            unpack_lanes<TYPE>(grp, L, b, h, w);
            const __m256 d =
                _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(grp + L.d + b * 32 + 16 * h)));
            __m256 m = _mm256_setzero_ps();
            if constexpr (ti::has_m) {
                m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(grp + L.m + b * 32 + 16 * h)));
            }
            RWKV_UNROLL
            for (int tt = 0; tt < TT; ++tt) {
                const __m256 dot = _mm256_cvtepi32_ps(dot_lanes<TYPE>(w, x[tt].q + b * PACK_BLOCK));
                const __m256 dx = _mm256_set1_ps(x[tt].dx[b]);
                if constexpr (ti::has_m) {
                    acc[h][tt] = _mm256_fmadd_ps(d, _mm256_mul_ps(dot, dx), acc[h][tt]);
                    acc[h][tt] = _mm256_fmadd_ps(m, _mm256_set1_ps(x[tt].sx[b]), acc[h][tt]);
                } else {
                    const __m256 corr = _mm256_set1_ps(-offset * x[tt].sx[b]);
                    acc[h][tt] = _mm256_fmadd_ps(d, _mm256_fmadd_ps(dot, dx, corr), acc[h][tt]);
                }
            }
        }
    }
}

// TT float columns times one F16 group ([K][16] halves), both halves per
// column k; every column sums in the same U chains whatever TT is.
template <int TT>
RWKV_AVX2 void f16_group(const uint8_t * grp, int64_t K, const float * const * x, __m256 (*acc)[TT]) {
    constexpr int U = 2;
    __m256 a[2][TT][U];
    RWKV_UNROLL
    for (int h = 0; h < 2; ++h)
        RWKV_UNROLL
        for (int tt = 0; tt < TT; ++tt)
            RWKV_UNROLL
            for (int u = 0; u < U; ++u) a[h][tt][u] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += U) {
        RWKV_UNROLL
        for (int u = 0; u < U; ++u) {
            const __m128i * p = reinterpret_cast<const __m128i *>(grp + (k + u) * 32);
            const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128(p)), w1 = _mm256_cvtph_ps(_mm_loadu_si128(p + 1));
            RWKV_UNROLL
            for (int tt = 0; tt < TT; ++tt) {
                const __m256 xv = _mm256_set1_ps(x[tt][k + u]);
                a[0][tt][u] = _mm256_fmadd_ps(w0, xv, a[0][tt][u]);
                a[1][tt][u] = _mm256_fmadd_ps(w1, xv, a[1][tt][u]);
            }
        }
    }
    RWKV_UNROLL
    for (int h = 0; h < 2; ++h)
        RWKV_UNROLL
        for (int tt = 0; tt < TT; ++tt) acc[h][tt] = _mm256_add_ps(a[h][tt][0], a[h][tt][1]);
}

// The first n (<= 8) floats of v.
RWKV_AVX2 void store_rows(float * y, __m256 v, int n) {
    if (n == HALF_ROWS) {
        _mm256_storeu_ps(y, v);
        return;
    }
    alignas(32) float tmp[HALF_ROWS];
    _mm256_store_ps(tmp, v);
    std::copy(tmp, tmp + n, y);
}

// Rows of a group still to be written in half h (0..8).
int half_rows(const PackedMatrix & w, int64_t g, int h) {
    const int64_t n = std::min<int64_t>(PACK_ROWS, w.rows() - g * PACK_ROWS) - HALF_ROWS * h;
    return static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(HALF_ROWS, n)));
}

template <ggml_type TYPE, int TT>
RWKV_AVX2 void quant_tile(const PackedMatrix & w, const uint8_t * x, int64_t t0, float * y, int64_t y_stride,
                          int64_t g0, int64_t g1) {
    const size_t col_bytes = quantized_column_bytes(w.cols());
    QColumn cols[TT];
    for (int tt = 0; tt < TT; ++tt) cols[tt] = qcolumn(x + (t0 + tt) * col_bytes, w.cols());
    const int64_t nb = w.cols() / PACK_BLOCK;
    for (int64_t g = g0; g < g1; ++g) {
        __m256 acc[2][TT];
        quant_group<TYPE, TT>(w.group(g), w.layout(), nb, cols, acc);
        for (int h = 0; h < 2; ++h) {
            const int n = half_rows(w, g, h);
            for (int tt = 0; tt < TT && n > 0; ++tt) {
                store_rows(y + (t0 + tt) * y_stride + g * PACK_ROWS + HALF_ROWS * h, acc[h][tt], n);
            }
        }
    }
}

template <int TT>
RWKV_AVX2 void f16_tile(const PackedMatrix & w, const float * x, int64_t t0, float * y, int64_t y_stride, int64_t g0,
                        int64_t g1) {
    const float * cols[TT];
    for (int tt = 0; tt < TT; ++tt) cols[tt] = x + (t0 + tt) * w.cols();
    for (int64_t g = g0; g < g1; ++g) {
        __m256 acc[2][TT];
        f16_group<TT>(w.group(g), w.cols(), cols, acc);
        for (int h = 0; h < 2; ++h) {
            const int n = half_rows(w, g, h);
            for (int tt = 0; tt < TT && n > 0; ++tt) {
                store_rows(y + (t0 + tt) * y_stride + g * PACK_ROWS + HALF_ROWS * h, acc[h][tt], n);
            }
        }
    }
}

// Columns in tiles of 2 (16 ymm registers), the last one alone, cache-blocked
// (for_each_block).
struct Kernels {
    template <ggml_type TYPE>
    static void quant(const PackedMatrix & w, const uint8_t * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                      int64_t g1) {
        for_each_block<2>(w, quantized_column_bytes(w.cols()), T, g0, g1, [&](auto tt, int64_t t0, int64_t ga, int64_t gb) {
            quant_tile<TYPE, decltype(tt)::value>(w, x, t0, y, y_stride, ga, gb);
        });
    }

    static void f16(const PackedMatrix & w, const float * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                    int64_t g1) {
        for_each_block<2>(w, w.cols() * sizeof(float), T, g0, g1, [&](auto tt, int64_t t0, int64_t ga, int64_t gb) {
            f16_tile<decltype(tt)::value>(w, x, t0, y, y_stride, ga, gb);
        });
    }
};

}  // namespace

void quantize_block_avx2(const float * x, int8_t * q, float * dx, float * sx) { quantize_block(x, q, dx, sx); }

void multiply_avx2(const PackedMatrix & w, const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                   int64_t g1) {
    multiply_by_type<Kernels>(w, x, T, y, y_stride, g0, g1);
}

}  // namespace packed
}  // namespace rwkv

#else  // not x86-64: never called (packed_isa() is NONE)

namespace rwkv {
namespace packed {
void quantize_block_avx2(const float *, int8_t *, float *, float *) {}
void multiply_avx2(const PackedMatrix &, const void *, int64_t, float *, int64_t, int64_t, int64_t) {}
}  // namespace packed
}  // namespace rwkv

#endif
