// Internal helpers shared by every layer of the library: the error type that
// carries a status and a message up to the C API, formatting, and logging
// through the caller's callback.
#pragma once

#include "rwkv.h"

#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace rwkv {

// Thrown inside the library, caught and converted to a status in rwkv.cpp.
class Error : public std::runtime_error {
public:
    Error(rwkv_status status, const std::string & message)
        : std::runtime_error(message), status_(status) {}
    rwkv_status status() const { return status_; }

private:
    rwkv_status status_;
};

#if defined(__MINGW32__)  // its "printf" means Microsoft's, without %zu; format() uses C99's
#    define RWKV_PRINTF_LIKE(fmt, args) __attribute__((format(gnu_printf, fmt, args)))
#elif defined(__GNUC__)
#    define RWKV_PRINTF_LIKE(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#    define RWKV_PRINTF_LIKE(fmt, args)
#endif

std::string format(const char * fmt, ...) RWKV_PRINTF_LIKE(1, 2);

[[noreturn]] void fail(rwkv_status status, const char * fmt, ...) RWKV_PRINTF_LIKE(2, 3);

// Where the library's messages go; silent unless the caller set a callback.
struct Logger {
    rwkv_log_callback callback = nullptr;
    void * user_data = nullptr;

    void log(rwkv_log_level level, const char * fmt, ...) const RWKV_PRINTF_LIKE(3, 4);
};

// The defaults of the C API's parameter structs (rwkv.cpp forwards to these,
// so that no layer below it calls back into the API).
rwkv_model_params default_model_params();
rwkv_context_params default_context_params();
rwkv_quantize_params default_quantize_params();

// The integer value of an enum that came through the C API, where any int
// may arrive.  Read from its storage, not loaded as the C++ enum: loading a
// value outside the enum's range is undefined behaviour in C++ (UBSan
// reports it).  Check the int before converting it back.
template <typename E>
int c_enum_value(const E & value) {
    static_assert(sizeof(E) == sizeof(int), "the C API's enums are int-sized");
    int v;
    std::memcpy(&v, &value, sizeof v);
    return v;
}

// "FP32", "FP16", "Q8_0", ... ("unknown" for a value outside the enum).
const char * type_name(rwkv_type type);

// a * b, failing instead of wrapping around (sizes read from files).
uint64_t checked_mul(uint64_t a, uint64_t b, const char * what);

// Memory aligned to `alignment` (a power of two), size rounded up to a
// multiple of it; null when out of memory.  Freed with aligned_free only
// (Windows' CRT has no std::aligned_alloc, and its aligned blocks need
// _aligned_free).
void * aligned_malloc(size_t alignment, size_t size);
void aligned_free(void * p);

}  // namespace rwkv
