// Model layer: hyper-parameters read once from file metadata, the expected
// tensor set of each RWKV version, and the immutable weights.
#pragma once

#include "rwkv_common.h"
#include "rwkv_file.h"
#include "rwkv_packed.h"
#include "rwkv_packed_cache.h"

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

struct ggml_tensor;
struct ggml_backend_buffer;

namespace rwkv {

enum class Arch {
    V4,
    V5,  // RWKV-5.0, 5.1, 5.2 (general.architecture "rwkv5")
    V6,  // RWKV-6.0 ("rwkv6")
    V7,  // RWKV-7.0 ("rwkv7")
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
    // RWKV-5 and later (docs/FORMAT.md): n_head * head_size = n_embed.
    uint32_t n_head = 0;
    uint32_t head_size = 0;
    float ln_x_eps = 0.0f;          // epsilon of the att.ln_x GroupNorm
    bool has_gate = false;          // 5.1, 5.2, 6.0: att.gate.weight (v7 gates through its g LoRA)
    uint32_t lora_mix = 0;          // v6: rank of the token-shift LoRA (time_maa_w1 is 5x this)
    uint32_t lora_decay = 0;        // v6, v7: rank of the decay LoRA
    uint32_t lora_a = 0;            // v7: rank of the in-context learning rate LoRA
    uint32_t lora_v = 0;            // v7: rank of the value-residual LoRA (0 when n_layer = 1)
    uint32_t lora_gate = 0;         // v7: rank of the gate LoRA
};

// What a tensor is, for policies that treat tensors differently (which
// matrices a quantizer may quantize).  Decided by the model's tensor table,
// never by matching names.
// LOW_RANK: the small LoRA matrices of v6/v7 (decay, token shift, gate...),
// never quantized (they stay F32 or F16).
enum class TensorRole { VECTOR, EMBEDDING, MATRIX, HEAD, LOW_RANK };

struct TensorEntry {
    std::string name;
    TensorRole role;
    ggml_tensor * tensor;
};

// RWKV-4 state: per layer, five vectors in the official order.
enum V4StateSlot { V4_ATT_XX = 0, V4_ATT_AA = 1, V4_ATT_BB = 2, V4_ATT_PP = 3, V4_FFN_XX = 4, V4_SLOTS = 5 };

// Channel mixing with receptance (v4 and v5: time_mix_k/r; v6: time_maa_k/r):
// the same tensors and maths in every version that has it.
struct FfnRKV {
    ggml_tensor * mix_k = nullptr;
    ggml_tensor * mix_r = nullptr;
    ggml_tensor * k = nullptr;
    ggml_tensor * r = nullptr;
    ggml_tensor * v = nullptr;
};

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
    FfnRKV ffn;
};

// RWKV-5/6/7 state: per layer, the att token-shift vector (D), the WKV
// matrix state (n_head * head_size * head_size) and the ffn token-shift
// vector (D), in the official order.  v5/v6 hold each head's matrix as
// (key, value), v7 as (value, key).
enum WkvStateSlot { WKV_ATT_XX = 0, WKV_ATT_STATE = 1, WKV_FFN_XX = 2 };

// Tensors shared by the time mixing of v5, v6 and v7.
struct AttCommon {
    ggml_tensor * ln1_w = nullptr;
    ggml_tensor * ln1_b = nullptr;
    ggml_tensor * ln2_w = nullptr;
    ggml_tensor * ln2_b = nullptr;
    ggml_tensor * r = nullptr;         // receptance.weight
    ggml_tensor * k = nullptr;         // key.weight
    ggml_tensor * v = nullptr;         // value.weight
    ggml_tensor * o = nullptr;         // output.weight
    ggml_tensor * g = nullptr;         // gate.weight (v5.1+, v6; null for 5.0 and v7)
    ggml_tensor * lnx_w = nullptr;     // ln_x (GroupNorm) weight
    ggml_tensor * lnx_b = nullptr;
};

struct LayerV5 {
    AttCommon att;
    ggml_tensor * mix_k = nullptr;     // time_mix_k, _v, _r, _g (g: 5.1+)
    ggml_tensor * mix_v = nullptr;
    ggml_tensor * mix_r = nullptr;
    ggml_tensor * mix_g = nullptr;
    ggml_tensor * decay = nullptr;     // (H, N): exp(-exp(time_decay))
    ggml_tensor * bonus = nullptr;     // (H, N): time_faaaa (u)
    FfnRKV ffn;
};

struct LayerV6 {
    AttCommon att;
    ggml_tensor * maa_x = nullptr;     // time_maa_x, _w, _k, _v, _r, _g
    ggml_tensor * maa[5] = {};         // in the LoRA's order w, k, v, r, g
    ggml_tensor * maa_w1 = nullptr;    // (5E, D)
    ggml_tensor * maa_w2 = nullptr;    // (5, D, E)
    ggml_tensor * decay = nullptr;     // (D): time_decay, as in the checkpoint
    ggml_tensor * decay_w1 = nullptr;  // (Ed, D)
    ggml_tensor * decay_w2 = nullptr;  // (D, Ed)
    ggml_tensor * bonus = nullptr;     // (H, N): time_faaaa
    FfnRKV ffn;
};

struct LayerV7 {
    AttCommon att;
    ggml_tensor * x[6] = {};           // x_r, x_w, x_k, x_v, x_a, x_g
    ggml_tensor * w0 = nullptr, * w1 = nullptr, * w2 = nullptr;
    ggml_tensor * a0 = nullptr, * a1 = nullptr, * a2 = nullptr;
    ggml_tensor * v0 = nullptr, * v1 = nullptr, * v2 = nullptr;  // null in layer 0
    ggml_tensor * g1 = nullptr, * g2 = nullptr;
    ggml_tensor * k_k = nullptr, * k_a = nullptr;
    ggml_tensor * r_k = nullptr;       // (H, N)
    ggml_tensor * ffn_x_k = nullptr;
    ggml_tensor * ffn_k = nullptr;
    ggml_tensor * ffn_v = nullptr;
};

// Index of each of the six token-shift mixes of RWKV-7 in LayerV7::x.
enum V7Mix { V7_MIX_R = 0, V7_MIX_W, V7_MIX_K, V7_MIX_V, V7_MIX_A, V7_MIX_G, V7_MIXES };

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
    // Offset (in floats) of a state slot of a layer, RWKV-5 and later.
    size_t wkv_state_offset(uint32_t layer, WkvStateSlot slot) const;
    void init_state(float * state) const;
    // The packed form of a matrix (rwkv_packed.h), or null when the matrix
    // stays in ggml's layout (not packed, or packing off / unavailable).
    const PackedMatrix * packed(const ggml_tensor * t) const;
    size_t packed_bytes() const;
    // The kernels of the packed matrices (NONE when none was packed).
    PackedIsa packed_kernels() const { return packed_.empty() ? PackedIsa::NONE : packed_isa_; }

    ggml_tensor * emb = nullptr;
    ggml_tensor * ln0_w = nullptr;   // only when the file has ln0 not pre-applied
    ggml_tensor * ln0_b = nullptr;
    std::vector<LayerV4> layers;
    std::vector<LayerV5> layers_v5;
    std::vector<LayerV6> layers_v6;
    std::vector<LayerV7> layers_v7;
    ggml_tensor * ln_out_w = nullptr;
    ggml_tensor * ln_out_b = nullptr;
    ggml_tensor * head = nullptr;
    // RWKV-5/6/7 files with a tuned initial state: its WKV matrices, one per
    // layer (empty otherwise); init_state starts from them.
    std::vector<ggml_tensor *> time_state;
    bool has_tuned_state() const { return !time_state.empty(); }

private:
    Model() = default;
    void read_hparams();
    void read_hparams_wkv();
    void bind_tensors();
    void bind_tensors_v4();
    void bind_tensors_v5();
    void bind_tensors_v6();
    void bind_tensors_v7();
    void map_weights();
    // cache_path: a packed-weight cache to map, or to write after packing
    // (empty: none); model_path: the file loaded.
    void pack_weights(PackedIsa isa, const std::string & cache_path, const std::string & model_path);
    void pack_into_buffer(const std::vector<ggml_tensor *> & todo, const std::vector<size_t> & offsets, PackedIsa isa);

    HParams hp_;
    Logger log_;
    std::vector<TensorEntry> entries_;
    std::unique_ptr<GgufFile> file_;
    ggml_backend_buffer * weights_ = nullptr;
    std::unordered_map<const ggml_tensor *, std::unique_ptr<PackedMatrix>> packed_;
    PackedBuffer packed_memory_;  // one buffer for every packed matrix
    std::unique_ptr<PackedCache> packed_cache_;  // or their cache, mapped
    PackedIsa packed_isa_ = PackedIsa::NONE;
};

}  // namespace rwkv
