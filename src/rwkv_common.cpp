#include "rwkv_common.h"

#include <cstdio>
#include <vector>

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

uint64_t checked_mul(uint64_t a, uint64_t b, const char * what) {
    if (a != 0 && b > UINT64_MAX / a) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "%s overflows (%llu x %llu)", what,
             static_cast<unsigned long long>(a), static_cast<unsigned long long>(b));
    }
    return a * b;
}

}  // namespace rwkv
