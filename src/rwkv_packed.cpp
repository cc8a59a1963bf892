#include "rwkv_packed.h"

#include "rwkv_common.h"
#include "rwkv_ops_util.h"
#include "rwkv_packed_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#    include <sys/mman.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#    include <cpuid.h>
#endif

namespace rwkv {

using packed::QColumn;
using packed::qcolumn;

namespace {

constexpr size_t ALIGN = 64;

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// packed::BlockTraits of a block type known at run time.
struct TypeInfo {
    bool has_m;      // d*q + m (else d*(q - offset))
    bool has_qh;     // Q5: fifth bit separately
    bool eight_bit;  // Q8_0: 8 lanes of bytes instead of 4 of nibbles
    float offset;    // o of the offset types
};

template <ggml_type TYPE>
constexpr TypeInfo info_of() {
    using t = packed::BlockTraits<TYPE>;
    return {t::has_m, t::has_qh, t::eight_bit, t::offset};
}

TypeInfo info(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: return info_of<GGML_TYPE_Q4_0>();
        case GGML_TYPE_Q4_1: return info_of<GGML_TYPE_Q4_1>();
        case GGML_TYPE_Q5_0: return info_of<GGML_TYPE_Q5_0>();
        case GGML_TYPE_Q5_1: return info_of<GGML_TYPE_Q5_1>();
        case GGML_TYPE_Q8_0: return info_of<GGML_TYPE_Q8_0>();
        default: return {false, false, false, 0.0f};
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

// The best instruction set of this CPU for the packed kernels.
PackedIsa cpu_packed_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    // F16C through cpuid (leaf 1, ecx): clang before 15 has no "f16c" for __builtin_cpu_supports.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
        return PackedIsa::AVX512_VNNI;
    }
    return avx2 ? PackedIsa::AVX2 : PackedIsa::NONE;
#else
    return PackedIsa::NONE;
#endif
}

// RWKV_CPP_PACKED_ISA=avx2 (or none) caps the instruction set, to compare
// kernels on one machine; it never raises it above what the CPU has.
PackedIsa capped_by_environment(PackedIsa isa) {
    const char * cap = std::getenv("RWKV_CPP_PACKED_ISA");
    if (cap == nullptr) return isa;
    if (std::strcmp(cap, "none") == 0) return PackedIsa::NONE;
    if (std::strcmp(cap, "avx2") == 0) return std::min(isa, PackedIsa::AVX2);
    return isa;
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

// Buffers of at least this size are aligned to it and asked for as
// transparent huge pages (Linux, THP in "madvise" mode or above): decode
// reads them through fewer TLB entries (1.5B RWKV-4 Q4_0: 51.5 -> 39.4
// ms/token on this project's VM; FP16 unchanged).  Loading is not faster:
// there the kernel's zeroing of the fresh pages dominates either way.
constexpr size_t HUGE_PAGE = size_t(2) << 20;

uint8_t * allocate(size_t bytes) {
    bytes = std::max<size_t>(bytes, 1);
    const size_t alignment = bytes >= HUGE_PAGE ? HUGE_PAGE : ALIGN;
    auto * p = static_cast<uint8_t *>(aligned_malloc(alignment, bytes));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p != nullptr && alignment == HUGE_PAGE) {
        madvise(p, round_up(bytes, HUGE_PAGE), MADV_HUGEPAGE);  // a hint: failure leaves small pages
    }
#endif
    return p;
}

}  // namespace

PackedIsa packed_isa() {
    static const PackedIsa isa = capped_by_environment(cpu_packed_isa());
    return isa;
}

bool cpu_runs(PackedIsa isa) { return isa <= cpu_packed_isa(); }

bool packed_kernels_available() { return packed_isa() != PackedIsa::NONE; }

const char * packed_isa_name(PackedIsa isa) {
    switch (isa) {
        case PackedIsa::AVX512_VNNI: return "AVX-512 VNNI";
        case PackedIsa::AVX2: return "AVX2";
        case PackedIsa::NONE: break;
    }
    return "none";
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

void PackedFree::operator()(uint8_t * p) const { aligned_free(p); }

PackedBuffer allocate_packed(size_t bytes) { return PackedBuffer(allocate(bytes)); }

size_t PackedMatrix::packed_bytes(ggml_type type, int64_t n_rows, int64_t n_cols) {
    if (!packable(type, n_cols) || n_rows <= 0) return 0;
    Layout lay;
    const uint64_t groups = static_cast<uint64_t>((n_rows + PACK_ROWS - 1) / PACK_ROWS);
    return checked_mul(groups, group_layout(type, n_cols, lay), "packed matrix size");
}

PackedMatrix::PackedMatrix(ggml_type type, int64_t n_rows, int64_t n_cols, PackedIsa kernels)
    : type_(type), kernels_(kernels), n_rows_(n_rows), n_cols_(n_cols), n_groups_((n_rows + PACK_ROWS - 1) / PACK_ROWS) {
    if (!packable(type, n_cols) || n_rows <= 0) {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "cannot pack a %s matrix of %lld columns", ggml_type_name(type),
             static_cast<long long>(n_cols));
    }
    group_bytes_ = group_layout(type, n_cols, lay_);
}

std::unique_ptr<PackedMatrix> PackedMatrix::adopt(ggml_type type, int64_t n_rows, int64_t n_cols,
                                                  const uint8_t * packed, PackedIsa kernels) {
    std::unique_ptr<PackedMatrix> m(new PackedMatrix(type, n_rows, n_cols, kernels));
    m->base_ = packed;
    return m;
}

PackedMatrix::PackedMatrix(ggml_type type, int64_t n_rows, int64_t n_cols, const void * data, uint8_t * storage,
                           const Release & release, PackedIsa kernels)
    : PackedMatrix(type, n_rows, n_cols, kernels) {
    uint8_t * out = storage;
    if (out == nullptr) {
        const size_t total = packed_bytes(type, n_rows, n_cols);
        owned_ = allocate_packed(total);
        out = owned_.get();
        if (out == nullptr) {
            fail(RWKV_STATUS_ERROR_ALLOC, "cannot allocate %zu bytes for a packed matrix", total);
        }
    }
    base_ = out;
    const int64_t nb = n_cols / PACK_BLOCK;
    const uint8_t * src = static_cast<const uint8_t *>(data);
    const size_t row_bytes = ggml_row_size(type, n_cols);
    for (int64_t g = 0; g < n_groups_; ++g) {
        const uint8_t * rows[PACK_ROWS];
        const int n_valid = static_cast<int>(std::min<int64_t>(PACK_ROWS, n_rows - g * PACK_ROWS));
        for (int rr = 0; rr < PACK_ROWS; ++rr) rows[rr] = rr < n_valid ? src + (g * PACK_ROWS + rr) * row_bytes : nullptr;
        uint8_t * grp = out + g * group_bytes_;
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

void PackedMatrix::multiply(PackedIsa isa, const void * x, int64_t T, float * y, int64_t y_stride, int64_t g0,
                            int64_t g1) const {
    switch (isa) {
        case PackedIsa::AVX512_VNNI: packed::multiply_avx512(*this, x, T, y, y_stride, g0, g1); return;
        case PackedIsa::AVX2: packed::multiply_avx2(*this, x, T, y, y_stride, g0, g1); return;
        case PackedIsa::NONE: multiply_ref(x, T, y, y_stride, g0, g1); return;
    }
}

size_t quantized_column_bytes(int64_t n_cols) {
    return round_up(static_cast<size_t>(n_cols) + 2 * sizeof(float) * (n_cols / PACK_BLOCK), ALIGN);
}

void quantize_blocks(const float * x, int64_t x_stride, int64_t n_cols, int64_t i0, int64_t i1, uint8_t * out,
                     PackedIsa isa) {
    const int64_t nb = n_cols / PACK_BLOCK;
    const size_t col_bytes = quantized_column_bytes(n_cols);
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = i / nb, b = i % nb;
        uint8_t * col = out + t * col_bytes;
        float * dx = reinterpret_cast<float *>(col + n_cols);
        const float * src = x + t * x_stride + b * PACK_BLOCK;
        int8_t * q = reinterpret_cast<int8_t *>(col) + b * PACK_BLOCK;
        switch (isa) {
            case PackedIsa::AVX512_VNNI: packed::quantize_block_avx512(src, q, dx + b, dx + nb + b); break;
            case PackedIsa::AVX2: packed::quantize_block_avx2(src, q, dx + b, dx + nb + b); break;
            case PackedIsa::NONE: quantize_block_ref(src, q, dx + b, dx + nb + b); break;
        }
    }
}

namespace {

// dst i8 [quantized_column_bytes, T]; src 0: x f32 [K, T]; userdata: the
// PackedMatrix that takes it (whose kernels quantize).
void quantize_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const PackedMatrix & w = *static_cast<const PackedMatrix *>(userdata);
    const ggml_tensor * x = dst->src[0];
    const int64_t K = x->ne[0], T = x->ne[1];
    const ops::Range blocks = ops::thread_range(T * (K / PACK_BLOCK), ith, nth);
    quantize_blocks(static_cast<const float *>(x->data), x->nb[1] / sizeof(float), K, blocks.begin, blocks.end,
                    static_cast<uint8_t *>(dst->data), w.kernels());
}

// dst f32 [N, T]; src 0: the quantized x (or x itself for F16).
void packed_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const PackedMatrix & w = *static_cast<const PackedMatrix *>(userdata);
    const ops::Range groups = ops::thread_range(w.groups(), ith, nth);
    if (groups.begin < groups.end) {
        w.multiply(w.kernels(), dst->src[0]->data, dst->ne[1], static_cast<float *>(dst->data),
                   dst->nb[1] / sizeof(float), groups.begin, groups.end);
    }
}

}  // namespace

namespace {

// The source of a product node for x f32 [w.cols(), T]: x itself (F16, made
// contiguous if needed) or the node that quantizes it.
ggml_tensor * packed_source(ggml_context * ctx, const PackedMatrix & w, ggml_tensor * x, const char * op) {
    if (x->type != GGML_TYPE_F32 || x->ne[0] != w.cols() || x->ne[2] != 1 || x->ne[3] != 1) {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "%s: bad input shape", op);
    }
    if (x->nb[0] != sizeof(float) || (!w.quantized() && x->nb[1] != x->ne[0] * sizeof(float))) {
        x = ggml_cont(ctx, x);
    }
    if (!w.quantized()) {
        return x;
    }
    ggml_tensor * args[] = {x};
    return ggml_custom_4d(ctx, GGML_TYPE_I8, static_cast<int64_t>(quantized_column_bytes(w.cols())), x->ne[1], 1, 1,
                          args, 1, quantize_compute, GGML_N_TASKS_MAX, const_cast<PackedMatrix *>(&w));
}

// What a packed_products node computes; it lives in the graph's context
// (ggml_new_buffer), so it lasts as long as the graph.
struct ProductPlan {
    int n;
    const PackedMatrix * w[PACKED_PRODUCTS_MAX];
    PackedAct act[PACKED_PRODUCTS_MAX];
    int64_t y_offset[PACKED_PRODUCTS_MAX];  // elements before product i's block
    size_t cost_offset[PACKED_PRODUCTS_MAX + 1];  // weight bytes before product i
};

size_t group_cost(const PackedMatrix & w) { return w.bytes() / static_cast<size_t>(w.groups()); }

// y = act(y) on rows [r0, r1) of the T columns of y [T][rows].
void apply_activation(PackedAct act, float * y, int64_t rows, int64_t T, int64_t r0, int64_t r1) {
    for (int64_t t = 0; t < T; ++t) {
        float * col = y + t * rows;
        switch (act) {
            case PackedAct::NONE: return;
            case PackedAct::TANH: std::transform(col + r0, col + r1, col + r0, [](float v) { return std::tanh(v); }); break;
            case PackedAct::SIGMOID: std::transform(col + r0, col + r1, col + r0, ops::sigmoid); break;
            case PackedAct::RELU_SQ:
                std::transform(col + r0, col + r1, col + r0, [](float v) {
                    const float p = ops::positive_part(v);
                    return p * p;
                });
                break;
        }
    }
}

// Thread ith takes the weight bytes [c0, c1) of all products together, in
// whole row groups (a group belongs to the thread where it starts), so the
// products are one balanced pass over the weights.
void products_compute(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ProductPlan & plan = *static_cast<const ProductPlan *>(userdata);
    const size_t total = plan.cost_offset[plan.n];
    const size_t c0 = total * ith / nth, c1 = total * (ith + 1) / nth;
    const int64_t T = dst->ne[1];
    for (int i = 0; i < plan.n; ++i) {
        const PackedMatrix & w = *plan.w[i];
        const size_t cost = group_cost(w), base = plan.cost_offset[i];
        auto first_group_at = [&](size_t c) {
            return c <= base ? int64_t(0) : std::min(w.groups(), static_cast<int64_t>((c - base + cost - 1) / cost));
        };
        const int64_t g0 = first_group_at(c0), g1 = first_group_at(c1);
        if (g0 >= g1) {
            continue;
        }
        float * y = static_cast<float *>(dst->data) + plan.y_offset[i];
        w.multiply(w.kernels(), dst->src[i]->data, T, y, w.rows(), g0, g1);
        apply_activation(plan.act[i], y, w.rows(), T, g0 * PACK_ROWS, std::min(w.rows(), g1 * PACK_ROWS));
    }
}

}  // namespace

ggml_tensor * packed_mul_mat(ggml_context * ctx, const PackedMatrix & w, ggml_tensor * x) {
    ggml_tensor * args[] = {packed_source(ctx, w, x, "packed_mul_mat")};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w.rows(), x->ne[1], 1, 1, args, 1, packed_compute, GGML_N_TASKS_MAX,
                          const_cast<PackedMatrix *>(&w));
}

ggml_tensor * packed_products(ggml_context * ctx, const PackedProduct * products, int n, ggml_tensor ** blocks) {
    if (n < 1 || n > PACKED_PRODUCTS_MAX) {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "packed_products: %d products (1 to %d)", n, PACKED_PRODUCTS_MAX);
    }
    auto * plan = static_cast<ProductPlan *>(ggml_new_buffer(ctx, sizeof(ProductPlan)));
    *plan = ProductPlan{};
    plan->n = n;
    const int64_t T = products[0].x->ne[1];
    ggml_tensor * args[PACKED_PRODUCTS_MAX];
    int64_t rows = 0;
    for (int i = 0; i < n; ++i) {
        const PackedMatrix & w = *products[i].w;
        if (products[i].x->ne[1] != T) {
            fail(RWKV_STATUS_ERROR_UNSUPPORTED, "packed_products: inputs of different token counts");
        }
        args[i] = packed_source(ctx, w, products[i].x, "packed_products");
        plan->w[i] = &w;
        plan->act[i] = products[i].act;
        plan->y_offset[i] = rows * T;
        plan->cost_offset[i + 1] = plan->cost_offset[i] + w.bytes();
        rows += w.rows();
    }
    ggml_tensor * y = ggml_custom_4d(ctx, GGML_TYPE_F32, rows, T, 1, 1, args, n, products_compute, GGML_N_TASKS_MAX,
                                     plan);
    for (int i = 0; i < n; ++i) {
        const int64_t r = products[i].w->rows();
        blocks[i] = ggml_view_2d(ctx, y, r, T, r * sizeof(float), plan->y_offset[i] * sizeof(float));
    }
    return y;
}

}  // namespace rwkv
