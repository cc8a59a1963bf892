// libFuzzer harness of the GGUF model loader: the input is a model file.
// It is loaded with the default parameters (mapped, packed for this CPU's
// kernels) and again read into memory without packing; both loads must
// agree, and a model that loads must evaluate a token and refuse one out of
// range.  Seeds: tools/fuzz.py writes tiny valid models of every version.
#include "fuzz_util.h"

#include <vector>

using rwkv_fuzz::load_checked;

namespace {

// One token through a one-thread context: the evaluation of a model that
// loaded may give any numbers, but never fails or touches memory it should not.
void evaluate(const rwkv_model * model) {
    rwkv_context_params params = rwkv_context_default_params();
    params.n_threads = 1;
    rwkv_context * ctx = nullptr;
    char error[256];
    FUZZ_CHECK(rwkv_context_init(model, params, &ctx, error, sizeof(error)) == RWKV_STATUS_OK);
    std::vector<float> state(rwkv_model_state_len(model));
    std::vector<float> logits(rwkv_model_logits_len(model));
    const uint32_t n_vocab = rwkv_model_n_vocab(model);
    FUZZ_CHECK(rwkv_eval(ctx, n_vocab - 1, nullptr, state.data(), state.size(), logits.data(), logits.size()) ==
               RWKV_STATUS_OK);
    FUZZ_CHECK(rwkv_eval(ctx, n_vocab, state.data(), state.data(), state.size(), nullptr, 0) ==
               RWKV_STATUS_ERROR_INVALID_ARGUMENT);
    rwkv_context_free(ctx);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    const std::string path = rwkv_fuzz::write_memory_file(data, size);
    rwkv_model * mapped = load_checked(path, /*use_mmap=*/true, /*repack=*/true);
    rwkv_model * read = load_checked(path, /*use_mmap=*/false, /*repack=*/false);
    FUZZ_CHECK((mapped == nullptr) == (read == nullptr));
    if (mapped != nullptr) {
        FUZZ_CHECK(rwkv_model_n_vocab(mapped) == rwkv_model_n_vocab(read));
        FUZZ_CHECK(rwkv_model_state_len(mapped) == rwkv_model_state_len(read));
        FUZZ_CHECK(rwkv_model_logits_len(mapped) == rwkv_model_n_vocab(mapped));
        FUZZ_CHECK(rwkv_model_packed_bytes(read) == 0);
        evaluate(mapped);
        evaluate(read);
    }
    rwkv_model_free(mapped);
    rwkv_model_free(read);
    return 0;
}
