#include "rwkv_packed.h"

#include "rwkv_common.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#    include <immintrin.h>
#    define RWKV_HAVE_X86 1
#    define RWKV_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))
// The accumulators must stay in registers: unroll the short fixed loops.
#    define RWKV_UNROLL _Pragma("GCC unroll 16")
#else
#    define RWKV_HAVE_X86 0
#endif

namespace rwkv {

namespace {

constexpr size_t ALIGN = 64;

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// What each block type stores, in our terms (see the header).
struct TypeInfo {
    bool has_m;      // d*q + m (else d*(q - offset))
    bool has_qh;     // Q5: fifth bit separately
    bool eight_bit;  // Q8_0: 8 lanes of bytes instead of 4 of nibbles
    int offset;      // o of the offset types
};

TypeInfo info(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: return {false, false, false, 8};
        case GGML_TYPE_Q4_1: return {true, false, false, 0};
        case GGML_TYPE_Q5_0: return {false, true, false, 16};
        case GGML_TYPE_Q5_1: return {true, true, false, 0};
        case GGML_TYPE_Q8_0: return {false, false, true, 128};
        default: return {false, false, false, 0};
    }
}

uint16_t load_u16(const uint8_t * p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}

float half_to_float(uint16_t h) {
    ggml_fp16_t v;
    std::memcpy(&v, &h, 2);
    return ggml_fp16_to_fp32(v);
}

// Pointers into one quantized activation column.
struct QColumn {
    const int8_t * q;
    const float * dx;
    const float * sx;
};

QColumn qcolumn(const uint8_t * base, int64_t n_cols) {
    const int64_t nb = n_cols / PACK_BLOCK;
    const float * dx = reinterpret_cast<const float *>(base + n_cols);
    return {reinterpret_cast<const int8_t *>(base), dx, dx + nb};
}

// ---- reference (naive) quantization of one activation block ----
void quantize_block_ref(const float * x, int8_t * q, float * dx, float * sx) {
    float amax = 0.0f;
    for (int i = 0; i < PACK_BLOCK; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int i = 0; i < PACK_BLOCK; ++i) {
        q[i] = static_cast<int8_t>(std::nearbyint(x[i] * id));
        sum += q[i];
    }
    *dx = d;
    *sx = d * static_cast<float>(sum);
}

#if RWKV_HAVE_X86

RWKV_AVX512 void quantize_block_avx512(const float * x, int8_t * q, float * dx, float * sx) {
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
RWKV_AVX512 inline __m512i xlane(const int8_t * xq, int t) {
    int32_t v;
    std::memcpy(&v, xq + 4 * t, 4);
    return _mm512_set1_epi32(v);
}

// Block b of a group unpacked into 8 lanes of unsigned bytes.
template <ggml_type TYPE>
RWKV_AVX512 inline void unpack_lanes(const uint8_t * grp, const PackedMatrix::Layout & L, int64_t b, __m512i * w) {
    constexpr TypeInfo ti = TYPE == GGML_TYPE_Q4_0   ? TypeInfo{false, false, false, 8}
                            : TYPE == GGML_TYPE_Q4_1 ? TypeInfo{true, false, false, 0}
                            : TYPE == GGML_TYPE_Q5_0 ? TypeInfo{false, true, false, 16}
                            : TYPE == GGML_TYPE_Q5_1 ? TypeInfo{true, true, false, 0}
                                                     : TypeInfo{false, false, true, 128};
    const uint8_t * qs = grp + L.qs + b * L.qs_stride;
    if constexpr (ti.eight_bit) {
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
        if constexpr (ti.has_qh) {
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

// Software prefetch, this many blocks ahead (4 KiB of Q4/Q5 quants): at the
// start of each short weight stream the hardware prefetcher is still
// learning, and decode reads hundreds of such streams per token.  Measured
// side by side (2 threads, 5 processes each): 430M Q4_0 10.5 -> 8.6
// ms/token, Q5_1 11.5 -> 10.3, 1.5B Q4_0 33.3 -> 26.2.  Q8_0 and F16 showed
// no gain (their kernels already run at the bandwidth) and go without.
constexpr int64_t PREFETCH_BLOCKS = 16;

// Prefetch helpers must be inlined: GCC deems a function that only
// prefetches free of side effects and deletes calls to it.
#define RWKV_PREFETCH_HELPER RWKV_AVX512 inline __attribute__((always_inline))

RWKV_PREFETCH_HELPER void prefetch_line(const uint8_t * p) {
    _mm_prefetch(reinterpret_cast<const char *>(p), _MM_HINT_T0);
}

// Block b of a Q4/Q5 group (256 bytes of quants; reads past the group's end
// are harmless: prefetches never fault).
template <bool has_m, bool has_qh>
RWKV_PREFETCH_HELPER void prefetch_block(const uint8_t * grp, const PackedMatrix::Layout & L, int64_t b) {
    const uint8_t * qs = grp + L.qs + b * 256;
    prefetch_line(qs);
    prefetch_line(qs + 64);
    prefetch_line(qs + 128);
    prefetch_line(qs + 192);
    if (b % 2 == 0) {  // 32-byte scales: one line per two blocks
        prefetch_line(grp + L.d + b * 32);
        if (has_m) prefetch_line(grp + L.m + b * 32);
    }
    if (has_qh) prefetch_line(grp + L.qh + b * 64);
}

// TT activation columns times one group of 16 rows; acc[tt] = 16 outputs.
template <ggml_type TYPE, int TT>
RWKV_AVX512 void quant_group(const uint8_t * grp, const PackedMatrix::Layout & L, int64_t nb, const QColumn * x,
                             __m512 * acc) {
    constexpr bool has_m = TYPE == GGML_TYPE_Q4_1 || TYPE == GGML_TYPE_Q5_1;
    constexpr bool has_qh = TYPE == GGML_TYPE_Q5_0 || TYPE == GGML_TYPE_Q5_1;
    constexpr bool eight_bit = TYPE == GGML_TYPE_Q8_0;
    constexpr float offset = TYPE == GGML_TYPE_Q4_0 ? 8.0f : TYPE == GGML_TYPE_Q5_0 ? 16.0f : 128.0f;
    RWKV_UNROLL
    for (int tt = 0; tt < TT; ++tt) acc[tt] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        if constexpr (!eight_bit) {
            prefetch_block<has_m, has_qh>(grp, L, b + PREFETCH_BLOCKS);
        }
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

// All columns in tiles of 4, the rest in smaller tiles.
template <ggml_type TYPE>
void quant_multiply(const PackedMatrix & w, const uint8_t * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                    int64_t g1) {
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) quant_tile<TYPE, 4>(w, x, t, y, y_stride, g0, g1);
    if (t + 2 <= T) {
        quant_tile<TYPE, 2>(w, x, t, y, y_stride, g0, g1);
        t += 2;
    }
    if (t < T) quant_tile<TYPE, 1>(w, x, t, y, y_stride, g0, g1);
}

void f16_multiply(const PackedMatrix & w, const float * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                  int64_t g1) {
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) f16_tile<4>(w, x, t, y, y_stride, g0, g1);
    if (t + 2 <= T) {
        f16_tile<2>(w, x, t, y, y_stride, g0, g1);
        t += 2;
    }
    if (t < T) f16_tile<1>(w, x, t, y, y_stride, g0, g1);
}

#endif  // RWKV_HAVE_X86

bool cpu_has_packed_features() {
#if RWKV_HAVE_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

uint32_t load_u32(const uint8_t * p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

void store_u32(uint8_t * p, uint32_t v) { std::memcpy(p, &v, 4); }

// Rows [0, n_valid) of one group of a quantized matrix (ggml block layouts,
// ggml-common.h: element j < 16 in the low nibble of qs[j], element j + 16 in
// its high nibble, Q5 fifth bits as bit j of a 32-bit qh) into the packed
// layout of the header.  With the 16 quant bytes of a Q4/Q5 block read as
// words W0..W3 (bytes 0-3, 4-7, 8-11, 12-15), lane pair j holds elements
// (8j + i, 8j + 4 + i): low nibbles of W0/W1 and W2/W3 for j = 0, 1, high
// nibbles for j = 2, 3.
void pack_quant_group(ggml_type type, const PackedMatrix::Layout & L, const uint8_t * const * rows, int n_valid,
                      int64_t nb, uint8_t * grp) {
    const TypeInfo ti = info(type);
    const size_t block_bytes = ggml_type_size(type);
    const size_t qs_at = ti.eight_bit ? 2 : (ti.has_m ? 4 : 2) + (ti.has_qh ? 4 : 0);
    constexpr uint32_t LO = 0x0F0F0F0Fu, HI = 0xF0F0F0F0u;
    for (int64_t b = 0; b < nb; ++b) {
        uint8_t * qs = grp + L.qs + b * L.qs_stride;
        uint64_t masks[8] = {};
        for (int rr = 0; rr < n_valid; ++rr) {
            const uint8_t * p = rows[rr] + b * block_bytes;
            std::memcpy(grp + L.d + b * L.d_stride + rr * 2, p, 2);
            if (ti.has_m) std::memcpy(grp + L.m + b * L.d_stride + rr * 2, p + 2, 2);
            const uint8_t * q = p + qs_at;
            if (ti.eight_bit) {
                for (int t = 0; t < 8; ++t) store_u32(qs + 64 * t + 4 * rr, load_u32(q + 4 * t) ^ 0x80808080u);
                continue;
            }
            const uint32_t w0 = load_u32(q), w1 = load_u32(q + 4), w2 = load_u32(q + 8), w3 = load_u32(q + 12);
            store_u32(qs + 4 * rr, (w0 & LO) | ((w1 & LO) << 4));
            store_u32(qs + 64 + 4 * rr, (w2 & LO) | ((w3 & LO) << 4));
            store_u32(qs + 128 + 4 * rr, ((w0 >> 4) & LO) | (w1 & HI));
            store_u32(qs + 192 + 4 * rr, ((w2 >> 4) & LO) | (w3 & HI));
            if (ti.has_qh) {
                const uint32_t qh = load_u32(q - 4);
                for (int t = 0; t < 8; ++t) masks[t] |= static_cast<uint64_t>((qh >> (4 * t)) & 0xF) << (4 * rr);
            }
        }
        if (ti.has_qh) std::memcpy(grp + L.qh + b * L.qh_stride, masks, sizeof(masks));
    }
}

// Rows [0, n_valid) of one F16 group transposed to [K][16], 16 columns at a
// time through a small tile (strided 2-byte writes straight into the group
// would touch 16 cache lines per row).
void pack_f16_group(const uint8_t * const * rows, int n_valid, int64_t K, uint8_t * grp) {
    uint16_t tile[PACK_ROWS][16];
    for (int64_t k0 = 0; k0 < K; k0 += 16) {
        for (int rr = 0; rr < PACK_ROWS; ++rr) {
            if (rr < n_valid) {
                std::memcpy(tile[rr], rows[rr] + k0 * 2, sizeof(tile[rr]));
            } else {
                std::memset(tile[rr], 0, sizeof(tile[rr]));
            }
        }
        uint16_t out[16][PACK_ROWS];
        for (int k = 0; k < 16; ++k)
            for (int rr = 0; rr < PACK_ROWS; ++rr) out[k][rr] = tile[rr][k];
        std::memcpy(grp + k0 * PACK_ROWS * 2, out, sizeof(out));
    }
}

uint8_t * allocate(size_t bytes) {
    return static_cast<uint8_t *>(std::aligned_alloc(ALIGN, round_up(std::max<size_t>(bytes, 1), ALIGN)));
}

}  // namespace

bool packed_kernels_available() {
    static const bool available = cpu_has_packed_features();
    return available;
}

bool packable(ggml_type type, int64_t n_cols) {
    if (n_cols <= 0 || n_cols % PACK_BLOCK != 0) return false;
    switch (type) {
        case GGML_TYPE_F16:
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0:
            return true;
        default:
            return false;
    }
}

void PackedFree::operator()(uint8_t * p) const { std::free(p); }

PackedBuffer allocate_packed(size_t bytes) { return PackedBuffer(allocate(bytes)); }


namespace {

// Region offsets of one group (see the header); returns the group's bytes.
size_t group_layout(ggml_type type, int64_t n_cols, PackedMatrix::Layout & lay) {
    const int64_t nb = n_cols / PACK_BLOCK;
    const TypeInfo ti = info(type);
    lay = {};
    if (type == GGML_TYPE_F16) {
        return round_up(static_cast<size_t>(n_cols) * PACK_ROWS * 2, ALIGN);
    }
    lay.d_stride = PACK_ROWS * 2;
    lay.qh_stride = ti.has_qh ? 64 : 0;
    lay.qs_stride = ti.eight_bit ? 512 : 256;
    size_t off = round_up(nb * lay.d_stride, ALIGN);
    lay.m = off;
    if (ti.has_m) off = round_up(off + nb * lay.d_stride, ALIGN);
    lay.qh = off;
    off = round_up(off + nb * lay.qh_stride, ALIGN);
    lay.qs = off;
    return round_up(off + nb * lay.qs_stride, ALIGN);
}

constexpr int64_t RELEASE_GROUPS = 64;  // source rows handed back per release call: 1024

}  // namespace

size_t PackedMatrix::packed_bytes(ggml_type type, int64_t n_rows, int64_t n_cols) {
    if (!packable(type, n_cols) || n_rows <= 0) return 0;
    Layout lay;
    const uint64_t groups = static_cast<uint64_t>((n_rows + PACK_ROWS - 1) / PACK_ROWS);
    return checked_mul(groups, group_layout(type, n_cols, lay), "packed matrix size");
}

PackedMatrix::PackedMatrix(ggml_type type, int64_t n_rows, int64_t n_cols, const void * data, uint8_t * storage,
                           const Release & release)
    : type_(type), n_rows_(n_rows), n_cols_(n_cols), n_groups_((n_rows + PACK_ROWS - 1) / PACK_ROWS) {
    if (!packable(type, n_cols) || n_rows <= 0) {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "cannot pack a %s matrix of %lld columns", ggml_type_name(type),
             static_cast<long long>(n_cols));
    }
    group_bytes_ = group_layout(type, n_cols, lay_);
    base_ = storage;
    if (base_ == nullptr) {
        const size_t total = packed_bytes(type, n_rows, n_cols);
        owned_ = allocate_packed(total);
        base_ = owned_.get();
        if (base_ == nullptr) {
            fail(RWKV_STATUS_ERROR_ALLOC, "cannot allocate %zu bytes for a packed matrix", total);
        }
    }
    const int64_t nb = n_cols / PACK_BLOCK;
    const uint8_t * src = static_cast<const uint8_t *>(data);
    const size_t row_bytes = ggml_row_size(type, n_cols);
    for (int64_t g = 0; g < n_groups_; ++g) {
        const uint8_t * rows[PACK_ROWS];
        const int n_valid = static_cast<int>(std::min<int64_t>(PACK_ROWS, n_rows - g * PACK_ROWS));
        for (int rr = 0; rr < PACK_ROWS; ++rr) rows[rr] = rr < n_valid ? src + (g * PACK_ROWS + rr) * row_bytes : nullptr;
        uint8_t * grp = base_ + g * group_bytes_;
        std::memset(grp, 0, group_bytes_);  // padding rows: zero weights and scales
        if (type == GGML_TYPE_F16) {
            pack_f16_group(rows, n_valid, n_cols, grp);
        } else {
            pack_quant_group(type, lay_, rows, n_valid, nb, grp);
        }
        if (release && ((g + 1) % RELEASE_GROUPS == 0 || g + 1 == n_groups_)) {
            const int64_t r0 = (g / RELEASE_GROUPS) * RELEASE_GROUPS * PACK_ROWS, r1 = g * PACK_ROWS + n_valid;
            release(src + r0 * row_bytes, (r1 - r0) * row_bytes);
        }
    }
}

// The naive reference: unpack each weight from the packed bytes and sum in
// the order of the formula in the header.
void PackedMatrix::multiply_ref(const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0, int64_t g1) const {
    const int64_t K = n_cols_, nb = K / PACK_BLOCK;
    const TypeInfo ti = info(type_);
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t g = g0; g < g1; ++g) {
            const uint8_t * grp = group(g);
            for (int rr = 0; rr < PACK_ROWS && g * PACK_ROWS + rr < n_rows_; ++rr) {
                float acc = 0.0f;
                if (type_ == GGML_TYPE_F16) {
                    const float * xc = static_cast<const float *>(x) + t * K;
                    for (int64_t k = 0; k < K; ++k) acc += half_to_float(load_u16(grp + (k * PACK_ROWS + rr) * 2)) * xc[k];
                } else {
                    const QColumn xc = qcolumn(static_cast<const uint8_t *>(x) + t * quantized_column_bytes(K), K);
                    for (int64_t b = 0; b < nb; ++b) {
                        const uint8_t * qs = grp + lay_.qs + b * lay_.qs_stride;
                        const uint8_t * qh = grp + lay_.qh + b * lay_.qh_stride;
                        int32_t dot = 0;
                        for (int e = 0; e < PACK_BLOCK; ++e) {
                            const int t8 = e / 4, i = e % 4;
                            int q;
                            if (ti.eight_bit) {
                                q = qs[64 * t8 + 4 * rr + i];
                            } else {
                                const uint8_t byte = qs[64 * (t8 / 2) + 4 * rr + i];
                                q = (t8 % 2 == 0) ? (byte & 0x0F) : (byte >> 4);
                                if (ti.has_qh) {
                                    uint64_t bits;
                                    std::memcpy(&bits, qh + 8 * t8, 8);
                                    q |= static_cast<int>((bits >> (4 * rr + i)) & 1) << 4;
                                }
                            }
                            dot += q * xc.q[b * PACK_BLOCK + e];
                        }
                        const float d = half_to_float(load_u16(grp + lay_.d + b * lay_.d_stride + rr * 2));
                        if (ti.has_m) {
                            const float m = half_to_float(load_u16(grp + lay_.m + b * lay_.d_stride + rr * 2));
                            acc += d * (static_cast<float>(dot) * xc.dx[b]) + m * xc.sx[b];
                        } else {
                            acc += d * (static_cast<float>(dot) * xc.dx[b] - ti.offset * xc.sx[b]);
                        }
                    }
                }
                y[t * y_stride + g * PACK_ROWS + rr] = acc;
            }
        }
    }
}

void PackedMatrix::multiply(const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0, int64_t g1) const {
#if RWKV_HAVE_X86
    const uint8_t * xq = static_cast<const uint8_t *>(x);
    switch (type_) {
        case GGML_TYPE_F16: f16_multiply(*this, static_cast<const float *>(x), T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q4_0: quant_multiply<GGML_TYPE_Q4_0>(*this, xq, T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q4_1: quant_multiply<GGML_TYPE_Q4_1>(*this, xq, T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q5_0: quant_multiply<GGML_TYPE_Q5_0>(*this, xq, T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q5_1: quant_multiply<GGML_TYPE_Q5_1>(*this, xq, T, y, y_stride, g0, g1); return;
        case GGML_TYPE_Q8_0: quant_multiply<GGML_TYPE_Q8_0>(*this, xq, T, y, y_stride, g0, g1); return;
        default: break;
    }
#endif
    multiply_ref(x, T, y, y_stride, g0, g1);
}

size_t quantized_column_bytes(int64_t n_cols) {
    return round_up(static_cast<size_t>(n_cols) + 2 * sizeof(float) * (n_cols / PACK_BLOCK), ALIGN);
}

void quantize_blocks(const float * x, int64_t x_stride, int64_t n_cols, int64_t i0, int64_t i1, uint8_t * out,
                     bool simd) {
    const int64_t nb = n_cols / PACK_BLOCK;
    const size_t col_bytes = quantized_column_bytes(n_cols);
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = i / nb, b = i % nb;
        uint8_t * col = out + t * col_bytes;
        float * dx = reinterpret_cast<float *>(col + n_cols);
        const float * src = x + t * x_stride + b * PACK_BLOCK;
        int8_t * q = reinterpret_cast<int8_t *>(col) + b * PACK_BLOCK;
#if RWKV_HAVE_X86
        if (simd) {
            quantize_block_avx512(src, q, dx + b, dx + nb + b);
            continue;
        }
#endif
        quantize_block_ref(src, q, dx + b, dx + nb + b);
    }
}

namespace {

// [begin, end) of n items for thread ith of nth.
void split_range(int64_t n, int ith, int nth, int64_t & begin, int64_t & end) {
    begin = n * ith / nth;
    end = n * (ith + 1) / nth;
}

// dst i8 [quantized_column_bytes, T]; src 0: x f32 [K, T].
void quantize_compute(ggml_tensor * dst, int ith, int nth, void *) {
    const ggml_tensor * x = dst->src[0];
    const int64_t K = x->ne[0], T = x->ne[1];
    int64_t i0, i1;
    split_range(T * (K / PACK_BLOCK), ith, nth, i0, i1);
    quantize_blocks(static_cast<const float *>(x->data), x->nb[1] / sizeof(float), K, i0, i1,
                    static_cast<uint8_t *>(dst->data), packed_kernels_available());
}

// dst f32 [N, T]; src 0: the quantized x (or x itself for F16).
void packed_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const PackedMatrix & w = *static_cast<const PackedMatrix *>(userdata);
    int64_t g0, g1;
    split_range(w.groups(), ith, nth, g0, g1);
    if (g0 < g1) {
        w.multiply(dst->src[0]->data, dst->ne[1], static_cast<float *>(dst->data), dst->nb[1] / sizeof(float), g0, g1);
    }
}

}  // namespace

ggml_tensor * packed_mul_mat(ggml_context * ctx, const PackedMatrix & w, ggml_tensor * x) {
    if (x->type != GGML_TYPE_F32 || x->ne[0] != w.cols() || x->ne[2] != 1 || x->ne[3] != 1) {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "packed_mul_mat: bad input shape");
    }
    if (x->nb[0] != sizeof(float) || (!w.quantized() && x->nb[1] != x->ne[0] * sizeof(float))) {
        x = ggml_cont(ctx, x);
    }
    const int64_t T = x->ne[1];
    ggml_tensor * src = x;
    if (w.quantized()) {
        ggml_tensor * args[] = {x};
        src = ggml_custom_4d(ctx, GGML_TYPE_I8, static_cast<int64_t>(quantized_column_bytes(w.cols())), T, 1, 1, args,
                             1, quantize_compute, GGML_N_TASKS_MAX, nullptr);
    }
    ggml_tensor * args[] = {src};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w.rows(), T, 1, 1, args, 1, packed_compute, GGML_N_TASKS_MAX,
                          const_cast<PackedMatrix *>(&w));
}

}  // namespace rwkv
