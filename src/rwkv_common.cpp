#include "rwkv_common.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

#ifdef _WIN32
#    include <malloc.h>
#endif

namespace rwkv {

static std::string vformat(const char * fmt, va_list args) {
    va_list copy;
    va_copy(copy, args);
    const int n = std::vsnprintf(nullptr, 0, fmt, copy);
    va_end(copy);
    if (n <= 0) {
        return std::string();
    }
    std::vector<char> buf(static_cast<size_t>(n) + 1);
    std::vsnprintf(buf.data(), buf.size(), fmt, args);
    return std::string(buf.data(), static_cast<size_t>(n));
}

std::string format(const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::string s = vformat(fmt, args);
    va_end(args);
    return s;
}

void fail(rwkv_status status, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::string s = vformat(fmt, args);
    va_end(args);
    throw Error(status, s);
}

void Logger::log(rwkv_log_level level, const char * fmt, ...) const {
    if (callback == nullptr) {
        return;
    }
    va_list args;
    va_start(args, fmt);
    std::string s = vformat(fmt, args);
    va_end(args);
    callback(level, s.c_str(), user_data);
}

rwkv_model_params default_model_params() {
    rwkv_model_params p;
    p.use_mmap = true;
    p.repack = true;
    p.packed_isa = RWKV_PACKED_ISA_AUTO;
    p.packed_cache = nullptr;
    p.log_callback = nullptr;
    p.log_user_data = nullptr;
    return p;
}

rwkv_context_params default_context_params() {
    rwkv_context_params p;
    p.n_threads = 0;
    p.max_chunk_tokens = 0;
    return p;
}

rwkv_quantize_params default_quantize_params() {
    rwkv_quantize_params p;
    p.n_threads = 0;
    p.quantize_head = false;
    p.quantize_emb = false;
    p.progress_callback = nullptr;
    p.progress_user_data = nullptr;
    p.error_buf = nullptr;
    p.error_buf_size = 0;
    return p;
}

const char * type_name(rwkv_type type) {
    switch (type) {
        case RWKV_TYPE_FP32: return "FP32";
        case RWKV_TYPE_FP16: return "FP16";
        case RWKV_TYPE_Q8_0: return "Q8_0";
        case RWKV_TYPE_Q5_0: return "Q5_0";
        case RWKV_TYPE_Q5_1: return "Q5_1";
        case RWKV_TYPE_Q4_0: return "Q4_0";
        case RWKV_TYPE_Q4_1: return "Q4_1";
    }
    return "unknown";
}

uint64_t checked_mul(uint64_t a, uint64_t b, const char * what) {
    if (a != 0 && b > UINT64_MAX / a) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "%s overflows (%llu x %llu)", what,
             static_cast<unsigned long long>(a), static_cast<unsigned long long>(b));
    }
    return a * b;
}

void * aligned_malloc(size_t alignment, size_t size) {
    const size_t rounded = (size + alignment - 1) / alignment * alignment;
#ifdef _WIN32
    return _aligned_malloc(rounded, alignment);
#else
    return std::aligned_alloc(alignment, rounded);
#endif
}

void aligned_free(void * p) {
#ifdef _WIN32
    _aligned_free(p);
#else
    std::free(p);
#endif
}

}  // namespace rwkv
