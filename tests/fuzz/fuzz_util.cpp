#include "fuzz_util.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <sys/mman.h>
#include <unistd.h>

namespace rwkv_fuzz {

void violated(const char * file, int line, const char * what) {
    std::fprintf(stderr, "%s:%d: invariant violated: %s\n", file, line, what);
    std::abort();
}

std::string write_memory_file(const uint8_t * data, size_t size) {
    static const int fd = memfd_create("rwkv_fuzz_input", MFD_CLOEXEC);
    FUZZ_CHECK(fd >= 0);
    FUZZ_CHECK(ftruncate(fd, 0) == 0);
    size_t done = 0;
    while (done < size) {
        const ssize_t n = pwrite(fd, data + done, size - done, static_cast<off_t>(done));
        FUZZ_CHECK(n > 0);
        done += static_cast<size_t>(n);
    }
    return "/proc/self/fd/" + std::to_string(fd);
}

rwkv_model * load_checked(const std::string & path, bool use_mmap, bool repack) {
    rwkv_model_params params = rwkv_model_default_params();
    params.use_mmap = use_mmap;
    params.repack = repack;
    rwkv_model * model = nullptr;
    char error[512];
    std::memset(error, 0, sizeof(error));
    const rwkv_status status = rwkv_model_load(path.c_str(), params, &model, error, sizeof(error));
    if (status != RWKV_STATUS_OK) {
        FUZZ_CHECK(model == nullptr);
        FUZZ_CHECK(error[0] != '\0');  // every refusal says why
        FUZZ_CHECK(std::strlen(error) < sizeof(error));
        return nullptr;
    }
    FUZZ_CHECK(model != nullptr);
    return model;
}

}  // namespace rwkv_fuzz
