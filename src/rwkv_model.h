// Model layer: hyper-parameters read once from file metadata, the expected
// tensor set of each RWKV version, and the immutable weights.
#pragma once

#include "rwkv_common.h"
#include "rwkv_file.h"

#include <memory>
#include <string>
#include <vector>

struct ggml_tensor;
struct ggml_backend_buffer;

namespace rwkv {

enum class Arch {
    V4,
};

struct HParams {
    Arch arch = Arch::V4;
    std::string version;      // as in the file: "4"
    std::string tokenizer;    // "20B", "world", "bytes" or ""
    rwkv_type file_type = RWKV_TYPE_FP32;
    uint32_t n_vocab = 0;
    uint32_t n_embed = 0;
    uint32_t n_layer = 0;
    uint32_t n_att = 0;       // width of the attention (WKV) channels
    uint32_t n_ffn = 0;       // hidden width of the channel-mixing MLP
    float ln_eps = 1e-5f;
    bool emb_ln0_applied = true;
};

// What a tensor is, for policies that treat tensors differently (which
// matrices a quantizer may quantize).  Decided by the model's tensor table,
// never by matching names.
enum class TensorRole { VECTOR, EMBEDDING, MATRIX, HEAD };

struct TensorEntry {
    std::string name;
    TensorRole role;
    ggml_tensor * tensor;
};

// RWKV-4 state: per layer, five vectors in the official order.
enum V4StateSlot { V4_ATT_XX = 0, V4_ATT_AA = 1, V4_ATT_BB = 2, V4_ATT_PP = 3, V4_FFN_XX = 4, V4_SLOTS = 5 };

struct LayerV4 {
    ggml_tensor * ln1_w = nullptr;
    ggml_tensor * ln1_b = nullptr;
    ggml_tensor * att_mix_k = nullptr;
    ggml_tensor * att_mix_v = nullptr;
    ggml_tensor * att_mix_r = nullptr;
    ggml_tensor * att_first = nullptr;   // time_first (bonus of the current token)
    ggml_tensor * att_decay = nullptr;   // stored as -exp(time_decay)
    ggml_tensor * att_k = nullptr;
    ggml_tensor * att_v = nullptr;
    ggml_tensor * att_r = nullptr;
    ggml_tensor * att_o = nullptr;
    ggml_tensor * ln2_w = nullptr;
    ggml_tensor * ln2_b = nullptr;
    ggml_tensor * ffn_mix_k = nullptr;
    ggml_tensor * ffn_mix_r = nullptr;
    ggml_tensor * ffn_k = nullptr;
    ggml_tensor * ffn_r = nullptr;
    ggml_tensor * ffn_v = nullptr;
};

class Model {
public:
    static std::unique_ptr<Model> load(const std::string & path, const rwkv_model_params & params);
    ~Model();

    const HParams & hparams() const { return hp_; }
    // Every tensor of the file with its role, in the model's canonical order.
    const std::vector<TensorEntry> & tensors() const { return entries_; }
    const GgufFile & file() const { return *file_; }
    const Logger & logger() const { return log_; }
    size_t state_len() const;
    // Offset (in floats) of a state slot of a layer.
    size_t v4_state_offset(uint32_t layer, V4StateSlot slot) const;
    void init_state(float * state) const;

    ggml_tensor * emb = nullptr;
    ggml_tensor * ln0_w = nullptr;   // only when the file has ln0 not pre-applied
    ggml_tensor * ln0_b = nullptr;
    std::vector<LayerV4> layers;
    ggml_tensor * ln_out_w = nullptr;
    ggml_tensor * ln_out_b = nullptr;
    ggml_tensor * head = nullptr;

private:
    Model() = default;
    void read_hparams();
    void bind_tensors_v4();
    void map_weights();

    HParams hp_;
    Logger log_;
    std::vector<TensorEntry> entries_;
    std::unique_ptr<GgufFile> file_;
    ggml_backend_buffer * weights_ = nullptr;
};

}  // namespace rwkv
