// libFuzzer harness of the evaluation calls' argument checks: token ids,
// buffer lengths and NULL/aliased buffers come from the input; every call
// must either succeed (exactly when its arguments are valid) or fail with
// RWKV_STATUS_ERROR_INVALID_ARGUMENT and a message, reading and writing only
// the buffers it was given (their sizes are exact, so ASan sees any overrun).
//
// The models come from the command line: --model=PATH, repeated (libFuzzer
// leaves flags with two dashes to the harness).  Input: byte 0 = flags,
// byte 1 = model and chunk size, then little-endian u16 token ids.
#include "fuzz_util.h"

#include <cstring>
#include <map>
#include <utility>
#include <vector>

namespace {

// The models and their contexts, kept for the whole run and freed at exit
// (before LeakSanitizer looks).
struct Models {
    std::vector<rwkv_model *> models;
    std::map<std::pair<size_t, uint32_t>, rwkv_context *> contexts;  // (model, max_chunk_tokens)
    ~Models() {
        for (auto & c : contexts) rwkv_context_free(c.second);
        for (rwkv_model * m : models) rwkv_model_free(m);
    }
} g_all;
std::vector<rwkv_model *> & g_models = g_all.models;
std::map<std::pair<size_t, uint32_t>, rwkv_context *> & g_contexts = g_all.contexts;

constexpr uint32_t CHUNK_SIZES[] = {0, 1, 2, 3, 5};  // 0: the library's default
constexpr size_t N_CHUNK_SIZES = sizeof(CHUNK_SIZES) / sizeof(CHUNK_SIZES[0]);

rwkv_context * context_for(size_t model, uint32_t chunk) {
    rwkv_context *& ctx = g_contexts[{model, chunk}];
    if (ctx == nullptr) {
        rwkv_context_params params = rwkv_context_default_params();
        params.n_threads = 1;
        params.max_chunk_tokens = chunk;
        char error[256];
        FUZZ_CHECK(rwkv_context_init(g_models[model], params, &ctx, error, sizeof(error)) == RWKV_STATUS_OK);
    }
    return ctx;
}

// A length that is exact, one short, one long or zero (two bits of the flags).
size_t perturbed(size_t exact, unsigned how) {
    const size_t options[4] = {exact, exact == 0 ? 0 : exact - 1, exact + 1, 0};
    return options[how & 3];
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int * argc, char *** argv) {
    for (int i = 1; i < *argc; i++) {
        const char * arg = (*argv)[i];
        if (std::strncmp(arg, "--model=", 8) == 0) {
            rwkv_model * m = rwkv_fuzz::load_checked(arg + 8, true, true);
            FUZZ_CHECK(m != nullptr);
            g_models.push_back(m);
        }
    }
    FUZZ_CHECK(!g_models.empty());  // give at least one --model=PATH
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size < 2) {
        return 0;
    }
    const uint8_t flags = data[0];
    const size_t model = (data[1] / N_CHUNK_SIZES) % g_models.size();
    rwkv_context * ctx = context_for(model, CHUNK_SIZES[data[1] % N_CHUNK_SIZES]);
    const uint32_t n_vocab = rwkv_model_n_vocab(g_models[model]);
    std::vector<uint32_t> tokens((size - 2) / 2);
    bool tokens_valid = !tokens.empty();
    for (size_t i = 0; i < tokens.size(); i++) {
        tokens[i] = data[2 + 2 * i] | (static_cast<uint32_t>(data[3 + 2 * i]) << 8);
        tokens_valid = tokens_valid && tokens[i] < n_vocab;
    }
    const bool state_in_null = flags & 1, alias = flags & 2, logits_null = flags & 4, all_logits = flags & 8;
    const size_t state_len = rwkv_model_state_len(g_models[model]);
    const size_t n_state = perturbed(state_len, flags >> 4);
    const size_t logits_len = all_logits ? tokens.size() * n_vocab : n_vocab;
    const size_t n_logits = perturbed(logits_len, flags >> 6);

    std::vector<float> state_in(n_state, 0.0f), state_out(n_state), logits(n_logits);
    rwkv_state_init(g_models[model], state_in.data(), n_state);  // fails harmlessly on a wrong length
    const float * in = state_in_null ? nullptr : state_in.data();
    float * out = alias ? state_in.data() : state_out.data();
    float * lg = logits_null ? nullptr : logits.data();
    const rwkv_status status =
        all_logits ? rwkv_eval_sequence_all_logits(ctx, tokens.data(), tokens.size(), in, out, n_state, lg, n_logits)
                   : rwkv_eval_sequence(ctx, tokens.data(), tokens.size(), in, out, n_state, lg, n_logits);
    const bool valid = tokens_valid && n_state == state_len && n_state > 0 &&
                       (lg == nullptr ? !all_logits : n_logits == logits_len);
    if (valid) {
        FUZZ_CHECK(status == RWKV_STATUS_OK);
        FUZZ_CHECK(rwkv_context_last_error(ctx)[0] == '\0');
    } else {
        FUZZ_CHECK(status == RWKV_STATUS_ERROR_INVALID_ARGUMENT);
        FUZZ_CHECK(rwkv_context_last_error(ctx)[0] != '\0');
    }
    return 0;
}
