// Helpers shared by the libFuzzer harnesses of this folder.
#pragma once

#include "rwkv.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace rwkv_fuzz {

// An invariant of the library that the input broke: prints it and aborts, so
// that libFuzzer records the input as a crash.
[[noreturn]] void violated(const char * file, int line, const char * what);

#define FUZZ_CHECK(cond) ((cond) ? (void)0 : ::rwkv_fuzz::violated(__FILE__, __LINE__, #cond))

// A file in memory (memfd) holding the given bytes; returns a path that
// open() reads it by (/proc/self/fd/N).  One file per process, rewritten by
// every call.
std::string write_memory_file(const uint8_t * data, size_t size);

// Loads path; checks the loader's contract (a status with a message and a
// NULL model on failure, a model on success).  Returns the model or NULL.
rwkv_model * load_checked(const std::string & path, bool use_mmap, bool repack);

}  // namespace rwkv_fuzz
