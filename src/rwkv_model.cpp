#include "rwkv_model.h"

#include "rwkv_packed.h"

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <cstring>
#include <set>
#include <thread>

namespace rwkv {

namespace {

constexpr uint32_t FORMAT_VERSION = 1;
// Generous sanity limits for sizes read from the file (checked before use).
constexpr uint32_t MAX_VOCAB = 1u << 24;
constexpr uint32_t MAX_EMBED = 1u << 16;
constexpr uint32_t MAX_LAYER = 1u << 12;
constexpr uint32_t MAX_HEAD_SIZE = 1u << 12;  // official models: 64
constexpr size_t WEIGHT_ALIGNMENT = 32;  // ggml CPU buffers need 32-byte aligned data
// Tensors of one layer in the smallest layout (RWKV-4: 18; 5.0: 20; later more).
constexpr uint64_t MIN_TENSORS_PER_LAYER = 18;

enum class Kind { VECTOR, MATRIX };

// One expected tensor: its name, kind and ggml shape (ne0 = input width for
// matrices, which keep the PyTorch (out, in) layout).
struct TensorSpec {
    std::string name;
    Kind kind;
    int64_t ne0;
    int64_t ne1;
    ggml_tensor ** slot;
    TensorRole role = TensorRole::VECTOR;  // derived from kind unless set
    int64_t ne2 = 1;                       // only v6's time_maa_w2 is 3-D
};

TensorRole role_of(const TensorSpec & s) {
    return s.kind == Kind::VECTOR ? TensorRole::VECTOR : (s.role == TensorRole::VECTOR ? TensorRole::MATRIX : s.role);
}

bool is_matrix_type(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32:
        case GGML_TYPE_F16:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q4_1:
            return true;
        default:
            return false;
    }
}

std::string shape_str(int64_t ne0, int64_t ne1, int64_t ne2 = 1) {
    if (ne2 != 1) {
        return format("[%lld, %lld, %lld]", static_cast<long long>(ne0), static_cast<long long>(ne1),
                      static_cast<long long>(ne2));
    }
    return ne1 == 1 ? format("[%lld]", static_cast<long long>(ne0))
                    : format("[%lld, %lld]", static_cast<long long>(ne0), static_cast<long long>(ne1));
}

std::string shape_str(const ggml_tensor * t) {
    std::string s = "[";
    const int n = ggml_n_dims(t);
    for (int i = 0; i < n; ++i) {
        s += format(i ? ", %lld" : "%lld", static_cast<long long>(t->ne[i]));
    }
    return s + "]";
}

void check_tensor(const ggml_tensor * t, const TensorSpec & spec) {
    if (t->ne[0] != spec.ne0 || t->ne[1] != spec.ne1 || t->ne[2] != spec.ne2 || t->ne[3] != 1) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "tensor '%s' has shape %s, expected %s (ggml order)",
             spec.name.c_str(), shape_str(t).c_str(), shape_str(spec.ne0, spec.ne1, spec.ne2).c_str());
    }
    if (spec.kind == Kind::VECTOR && t->type != GGML_TYPE_F32) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "tensor '%s' has type %s, expected f32", spec.name.c_str(),
             ggml_type_name(t->type));
    }
    if (spec.kind == Kind::MATRIX && !is_matrix_type(t->type)) {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "tensor '%s' has unsupported type %s", spec.name.c_str(),
             ggml_type_name(t->type));
    }
}

void check_range(const char * key, uint32_t value, uint32_t lo, uint32_t hi) {
    if (value < lo || value > hi) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "metadata '%s' = %u is out of range [%u, %u]", key, value, lo, hi);
    }
}

uint32_t get_ranged_u32(const GgufFile & f, const char * key, uint32_t lo, uint32_t hi) {
    const uint32_t value = f.get_u32(key);
    check_range(key, value, lo, hi);
    return value;
}

float get_epsilon(const GgufFile & f, const char * key) {
    const float eps = f.get_f32(key);
    if (!(eps > 0.0f && eps < 1.0f)) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "metadata '%s' = %g is out of range (0, 1)", key, eps);
    }
    return eps;
}

// general.architecture and rwkv.version must name one of these pairs.
struct ArchVersion {
    const char * arch;
    const char * version;
    Arch value;
};
constexpr ArchVersion KNOWN_VERSIONS[] = {
    {"rwkv4", "4", Arch::V4},   {"rwkv5", "5.0", Arch::V5}, {"rwkv5", "5.1", Arch::V5},
    {"rwkv5", "5.2", Arch::V5}, {"rwkv6", "6.0", Arch::V6}, {"rwkv7", "7.0", Arch::V7},
};

Arch arch_of(const std::string & arch, const std::string & version) {
    for (const ArchVersion & k : KNOWN_VERSIONS) {
        if (arch == k.arch && version == k.version) {
            return k.value;
        }
    }
    fail(RWKV_STATUS_ERROR_UNSUPPORTED,
         "model architecture '%s' (RWKV version '%s') is not supported: this build runs RWKV-4 (rwkv4), "
         "5.0/5.1/5.2 (rwkv5), 6.0 (rwkv6) and 7.0 (rwkv7)",
         arch.c_str(), version.c_str());
}

const char * arch_label(Arch a) {
    switch (a) {
        case Arch::V4: return "RWKV-4";
        case Arch::V5: return "RWKV-5";
        case Arch::V6: return "RWKV-6";
        case Arch::V7: return "RWKV-7";
    }
    return "RWKV";
}

// emb.weight first (and blocks.0.ln0 when the file did not fold it in).
std::vector<TensorSpec> embedding_specs(const HParams & hp, ggml_tensor ** emb, ggml_tensor ** ln0_w,
                                        ggml_tensor ** ln0_b) {
    const int64_t D = hp.n_embed, V = hp.n_vocab;
    std::vector<TensorSpec> specs = {{"emb.weight", Kind::MATRIX, D, V, emb, TensorRole::EMBEDDING}};
    if (!hp.emb_ln0_applied) {
        specs.push_back({"blocks.0.ln0.weight", Kind::VECTOR, D, 1, ln0_w});
        specs.push_back({"blocks.0.ln0.bias", Kind::VECTOR, D, 1, ln0_b});
    }
    return specs;
}

// ln_out and head last.
void add_output_specs(std::vector<TensorSpec> & specs, const HParams & hp, ggml_tensor ** ln_out_w,
                      ggml_tensor ** ln_out_b, ggml_tensor ** head) {
    const int64_t D = hp.n_embed, V = hp.n_vocab;
    specs.push_back({"ln_out.weight", Kind::VECTOR, D, 1, ln_out_w});
    specs.push_back({"ln_out.bias", Kind::VECTOR, D, 1, ln_out_b});
    specs.push_back({"head.weight", Kind::MATRIX, D, V, head, TensorRole::HEAD});
}

// The optional tuned initial state (RWKV-5/6/7, state tuning): when the file
// has blocks.0.att.time_state, every layer must have one, (H, N, N) F32 in
// the state's own layout (docs/FORMAT.md); last in the table, as the
// converter writes them.
void add_time_state_specs(std::vector<TensorSpec> & specs, const GgufFile & file, const HParams & hp,
                          std::vector<ggml_tensor *> & time_state) {
    time_state.assign(hp.n_layer, nullptr);
    if (file.find_tensor("blocks.0.att.time_state") == nullptr) {
        time_state.clear();
        return;
    }
    const int64_t H = hp.n_head, N = hp.head_size;
    for (uint32_t i = 0; i < hp.n_layer; ++i) {
        specs.push_back({format("blocks.%u.att.time_state", i), Kind::VECTOR, N, N, &time_state[i],
                         TensorRole::VECTOR, H});
    }
}

// Finds, checks and binds every expected tensor, in table order, then
// rejects any tensor of the file that the table does not name.
void bind_specs(const GgufFile & file, const std::vector<TensorSpec> & specs, std::vector<TensorEntry> & entries,
                const char * label) {
    std::set<std::string> expected;
    for (const TensorSpec & s : specs) {
        ggml_tensor * t = file.find_tensor(s.name.c_str());
        if (t == nullptr) {
            fail(RWKV_STATUS_ERROR_FILE_FORMAT, "missing tensor '%s' (expected shape %s)", s.name.c_str(),
                 shape_str(s.ne0, s.ne1, s.ne2).c_str());
        }
        check_tensor(t, s);
        *s.slot = t;
        expected.insert(s.name);
        entries.push_back({s.name, role_of(s), t});
    }
    for (int64_t i = 0; i < file.n_tensors(); ++i) {
        const char * name = file.tensor_name(i);
        if (expected.count(name) == 0) {
            fail(RWKV_STATUS_ERROR_FILE_FORMAT, "unexpected tensor '%s' in an %s file", name, label);
        }
    }
}

// The tensors of a layer that every version from 5 on has: layer norms,
// the four (five with the gate) square attention matrices and ln_x.
void add_att_common_specs(std::vector<TensorSpec> & specs, const std::string & p, int64_t D, bool gate,
                          AttCommon & a) {
    const std::vector<TensorSpec> common = {
        {p + "ln1.weight", Kind::VECTOR, D, 1, &a.ln1_w},
        {p + "ln1.bias", Kind::VECTOR, D, 1, &a.ln1_b},
        {p + "ln2.weight", Kind::VECTOR, D, 1, &a.ln2_w},
        {p + "ln2.bias", Kind::VECTOR, D, 1, &a.ln2_b},
        {p + "att.receptance.weight", Kind::MATRIX, D, D, &a.r},
        {p + "att.key.weight", Kind::MATRIX, D, D, &a.k},
        {p + "att.value.weight", Kind::MATRIX, D, D, &a.v},
        {p + "att.output.weight", Kind::MATRIX, D, D, &a.o},
        {p + "att.ln_x.weight", Kind::VECTOR, D, 1, &a.lnx_w},
        {p + "att.ln_x.bias", Kind::VECTOR, D, 1, &a.lnx_b},
    };
    specs.insert(specs.end(), common.begin(), common.end());
    if (gate) {
        specs.push_back({p + "att.gate.weight", Kind::MATRIX, D, D, &a.g});
    }
}

// Channel mixing with receptance (v5: time_mix_k/r, v6: time_maa_k/r).
void add_ffn_rkv_specs(std::vector<TensorSpec> & specs, const std::string & p, const char * mix, int64_t D,
                       int64_t F, FfnRKV & f) {
    const std::vector<TensorSpec> ffn = {
        {p + "ffn." + mix + "k", Kind::VECTOR, D, 1, &f.mix_k},
        {p + "ffn." + mix + "r", Kind::VECTOR, D, 1, &f.mix_r},
        {p + "ffn.key.weight", Kind::MATRIX, D, F, &f.k},
        {p + "ffn.receptance.weight", Kind::MATRIX, D, D, &f.r},
        {p + "ffn.value.weight", Kind::MATRIX, F, D, &f.v},
    };
    specs.insert(specs.end(), ffn.begin(), ffn.end());
}

// The kernels a model packs for: those asked for or, where this process
// cannot run them (packed_isa(): the CPU's best, capped by the debugging
// variable), the best below them that it can.
PackedIsa packed_kernels_for(int requested) {
    PackedIsa want = PackedIsa::NONE;
    switch (requested) {
        case RWKV_PACKED_ISA_AUTO:
        case RWKV_PACKED_ISA_AVX512_VNNI: want = PackedIsa::AVX512_VNNI; break;
        case RWKV_PACKED_ISA_AVX2: want = PackedIsa::AVX2; break;
        case RWKV_PACKED_ISA_NONE: want = PackedIsa::NONE; break;
        default:
            fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "rwkv_model_params.packed_isa = %d is not a value of enum rwkv_packed_isa",
                 requested);
    }
    return std::min(want, packed_isa());
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string & path, const rwkv_model_params & params) {
    std::unique_ptr<Model> m(new Model());
    m->log_.callback = params.log_callback;
    m->log_.user_data = params.log_user_data;
    m->file_ = GgufFile::open(path, params.use_mmap);
    m->read_hparams();
    m->bind_tensors();
    m->map_weights();
    const PackedIsa isa = packed_kernels_for(c_enum_value(params.packed_isa));
    if (params.repack && isa != PackedIsa::NONE) {
        m->pack_weights(isa, params.packed_cache != nullptr ? params.packed_cache : "", path);
    }
    m->log_.log(RWKV_LOG_LEVEL_INFO, "loaded '%s': RWKV-%s, n_vocab %u, n_embed %u, n_layer %u, %s",
                path.c_str(), m->hp_.version.c_str(), m->hp_.n_vocab, m->hp_.n_embed, m->hp_.n_layer,
                type_name(m->hp_.file_type));
    return m;
}

Model::~Model() {
    if (weights_ != nullptr) {
        ggml_backend_buffer_free(weights_);
    }
}

void Model::read_hparams() {
    const GgufFile & f = *file_;
    const std::string arch = f.get_str("general.architecture");
    if (!f.has_key("rwkv.format_version") && arch != "rwkv4" && arch != "rwkv5") {
        // a GGUF file of another program, e.g. llama.cpp's (which has no
        // rwkv4/rwkv5 architectures: those are damaged files of ours)
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "a GGUF file of architecture '%s' without rwkv_cpp's metadata "
             "(a llama.cpp file?): llama.cpp's rwkv6 and rwkv7 files are opened by the Python package "
             "(rwkv_cpp.Model) or converted with python -m rwkv_cpp.convert", arch.c_str());
    }
    const uint32_t format_version = f.get_u32("rwkv.format_version");
    if (format_version != FORMAT_VERSION) {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "file format version %u is not supported (this build reads %u)",
             format_version, FORMAT_VERSION);
    }
    hp_.version = f.get_str("rwkv.version");
    hp_.arch = arch_of(arch, hp_.version);
    hp_.n_vocab = get_ranged_u32(f, "rwkv.n_vocab", 1, MAX_VOCAB);
    hp_.n_embed = get_ranged_u32(f, "rwkv.n_embed", 1, MAX_EMBED);
    hp_.n_layer = get_ranged_u32(f, "rwkv.n_layer", 1, MAX_LAYER);
    // The tables of expected tensors grow with n_layer: a count that the
    // file's tensors cannot hold is refused before they are built, so that a
    // small file never makes the loader allocate more than its own size.
    if (hp_.n_layer * MIN_TENSORS_PER_LAYER > static_cast<uint64_t>(f.n_tensors())) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "metadata rwkv.n_layer = %u, but the file has only %lld tensors "
             "(each layer has at least %llu)", hp_.n_layer, static_cast<long long>(f.n_tensors()),
             static_cast<unsigned long long>(MIN_TENSORS_PER_LAYER));
    }
    hp_.n_ffn = get_ranged_u32(f, "rwkv.n_ffn", 1, 16 * MAX_EMBED);
    hp_.ln_eps = get_epsilon(f, "rwkv.layer_norm_epsilon");
    hp_.file_type = static_cast<rwkv_type>(get_ranged_u32(f, "general.file_type", RWKV_TYPE_FP32, RWKV_TYPE_Q4_1));
    hp_.tokenizer = f.has_key("rwkv.tokenizer") ? f.get_str("rwkv.tokenizer") : std::string();
    hp_.emb_ln0_applied = f.get_bool("rwkv.emb_ln0_applied");
    if (hp_.arch == Arch::V4) {
        hp_.n_att = get_ranged_u32(f, "rwkv.n_att", 1, MAX_EMBED);
    } else {
        read_hparams_wkv();
    }
}

// Hyper-parameters of RWKV-5 and later (docs/FORMAT.md).
void Model::read_hparams_wkv() {
    const GgufFile & f = *file_;
    hp_.n_head = get_ranged_u32(f, "rwkv.n_head", 1, MAX_EMBED);
    hp_.head_size = get_ranged_u32(f, "rwkv.head_size", 1, MAX_HEAD_SIZE);
    if (static_cast<uint64_t>(hp_.n_head) * hp_.head_size != hp_.n_embed) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "metadata rwkv.n_head (%u) * rwkv.head_size (%u) must equal rwkv.n_embed (%u)",
             hp_.n_head, hp_.head_size, hp_.n_embed);
    }
    hp_.n_att = hp_.n_embed;
    hp_.ln_x_eps = get_epsilon(f, "rwkv.ln_x_epsilon");
    hp_.has_gate = hp_.arch == Arch::V6 || (hp_.arch == Arch::V5 && hp_.version != "5.0");
    if (hp_.arch == Arch::V6) {
        hp_.lora_mix = get_ranged_u32(f, "rwkv.time_mix_lora_dim", 1, MAX_EMBED);
        hp_.lora_decay = get_ranged_u32(f, "rwkv.time_decay_lora_dim", 1, MAX_EMBED);
    } else if (hp_.arch == Arch::V7) {
        hp_.lora_decay = get_ranged_u32(f, "rwkv.decay_lora_dim", 1, MAX_EMBED);
        hp_.lora_a = get_ranged_u32(f, "rwkv.a_lora_dim", 1, MAX_EMBED);
        // Layer 0 has no value-residual LoRA: a one-layer model has none at all.
        hp_.lora_v = get_ranged_u32(f, "rwkv.v_lora_dim", hp_.n_layer > 1 ? 1 : 0, MAX_EMBED);
        hp_.lora_gate = get_ranged_u32(f, "rwkv.gate_lora_dim", 1, MAX_EMBED);
    }
}

void Model::bind_tensors() {
    switch (hp_.arch) {
        case Arch::V4: bind_tensors_v4(); return;
        case Arch::V5: bind_tensors_v5(); return;
        case Arch::V6: bind_tensors_v6(); return;
        case Arch::V7: bind_tensors_v7(); return;
    }
}

void Model::bind_tensors_v4() {
    const int64_t D = hp_.n_embed, A = hp_.n_att, F = hp_.n_ffn;
    std::vector<TensorSpec> specs = embedding_specs(hp_, &emb, &ln0_w, &ln0_b);
    layers.assign(hp_.n_layer, LayerV4());
    for (uint32_t i = 0; i < hp_.n_layer; ++i) {
        const std::string p = format("blocks.%u.", i);
        LayerV4 & l = layers[i];
        const std::vector<TensorSpec> layer_specs = {
            {p + "ln1.weight", Kind::VECTOR, D, 1, &l.ln1_w},
            {p + "ln1.bias", Kind::VECTOR, D, 1, &l.ln1_b},
            {p + "att.time_mix_k", Kind::VECTOR, D, 1, &l.att_mix_k},
            {p + "att.time_mix_v", Kind::VECTOR, D, 1, &l.att_mix_v},
            {p + "att.time_mix_r", Kind::VECTOR, D, 1, &l.att_mix_r},
            {p + "att.time_first", Kind::VECTOR, A, 1, &l.att_first},
            {p + "att.time_decay", Kind::VECTOR, A, 1, &l.att_decay},
            {p + "att.key.weight", Kind::MATRIX, D, A, &l.att_k},
            {p + "att.value.weight", Kind::MATRIX, D, A, &l.att_v},
            {p + "att.receptance.weight", Kind::MATRIX, D, A, &l.att_r},
            {p + "att.output.weight", Kind::MATRIX, A, D, &l.att_o},
            {p + "ln2.weight", Kind::VECTOR, D, 1, &l.ln2_w},
            {p + "ln2.bias", Kind::VECTOR, D, 1, &l.ln2_b},
            {p + "ffn.time_mix_k", Kind::VECTOR, D, 1, &l.ffn.mix_k},
            {p + "ffn.time_mix_r", Kind::VECTOR, D, 1, &l.ffn.mix_r},
            {p + "ffn.key.weight", Kind::MATRIX, D, F, &l.ffn.k},
            {p + "ffn.receptance.weight", Kind::MATRIX, D, D, &l.ffn.r},
            {p + "ffn.value.weight", Kind::MATRIX, F, D, &l.ffn.v},
        };
        specs.insert(specs.end(), layer_specs.begin(), layer_specs.end());
    }
    add_output_specs(specs, hp_, &ln_out_w, &ln_out_b, &head);
    bind_specs(*file_, specs, entries_, arch_label(hp_.arch));
}

// RWKV-5.0/5.1/5.2.  The converter stores the decay and the bonus (H, N)
// for every 5.x version (per-head values broadcast), so 5.1 and 5.2 share
// one table; 5.0 has no gate.
void Model::bind_tensors_v5() {
    const int64_t D = hp_.n_embed, F = hp_.n_ffn, H = hp_.n_head, N = hp_.head_size;
    std::vector<TensorSpec> specs = embedding_specs(hp_, &emb, &ln0_w, &ln0_b);
    layers_v5.assign(hp_.n_layer, LayerV5());
    for (uint32_t i = 0; i < hp_.n_layer; ++i) {
        const std::string p = format("blocks.%u.", i);
        LayerV5 & l = layers_v5[i];
        add_att_common_specs(specs, p, D, hp_.has_gate, l.att);
        const std::vector<TensorSpec> att = {
            {p + "att.time_mix_k", Kind::VECTOR, D, 1, &l.mix_k},
            {p + "att.time_mix_v", Kind::VECTOR, D, 1, &l.mix_v},
            {p + "att.time_mix_r", Kind::VECTOR, D, 1, &l.mix_r},
            {p + "att.time_decay", Kind::VECTOR, N, H, &l.decay},
            {p + "att.time_faaaa", Kind::VECTOR, N, H, &l.bonus},
        };
        specs.insert(specs.end(), att.begin(), att.end());
        if (hp_.has_gate) {
            specs.push_back({p + "att.time_mix_g", Kind::VECTOR, D, 1, &l.mix_g});
        }
        add_ffn_rkv_specs(specs, p, "time_mix_", D, F, l.ffn);
    }
    add_output_specs(specs, hp_, &ln_out_w, &ln_out_b, &head);
    add_time_state_specs(specs, *file_, hp_, time_state);
    bind_specs(*file_, specs, entries_, arch_label(hp_.arch));
}

void Model::bind_tensors_v6() {
    const int64_t D = hp_.n_embed, F = hp_.n_ffn, H = hp_.n_head, N = hp_.head_size;
    const int64_t E = hp_.lora_mix, Ed = hp_.lora_decay;
    constexpr TensorRole LR = TensorRole::LOW_RANK;
    std::vector<TensorSpec> specs = embedding_specs(hp_, &emb, &ln0_w, &ln0_b);
    layers_v6.assign(hp_.n_layer, LayerV6());
    for (uint32_t i = 0; i < hp_.n_layer; ++i) {
        const std::string p = format("blocks.%u.", i);
        LayerV6 & l = layers_v6[i];
        add_att_common_specs(specs, p, D, true, l.att);
        const std::vector<TensorSpec> att = {
            {p + "att.time_maa_x", Kind::VECTOR, D, 1, &l.maa_x},
            {p + "att.time_maa_w", Kind::VECTOR, D, 1, &l.maa[0]},
            {p + "att.time_maa_k", Kind::VECTOR, D, 1, &l.maa[1]},
            {p + "att.time_maa_v", Kind::VECTOR, D, 1, &l.maa[2]},
            {p + "att.time_maa_r", Kind::VECTOR, D, 1, &l.maa[3]},
            {p + "att.time_maa_g", Kind::VECTOR, D, 1, &l.maa[4]},
            {p + "att.time_maa_w1", Kind::MATRIX, D, 5 * E, &l.maa_w1, LR},
            {p + "att.time_maa_w2", Kind::MATRIX, E, D, &l.maa_w2, LR, 5},
            {p + "att.time_decay", Kind::VECTOR, D, 1, &l.decay},
            {p + "att.time_decay_w1", Kind::MATRIX, D, Ed, &l.decay_w1, LR},
            {p + "att.time_decay_w2", Kind::MATRIX, Ed, D, &l.decay_w2, LR},
            {p + "att.time_faaaa", Kind::VECTOR, N, H, &l.bonus},
        };
        specs.insert(specs.end(), att.begin(), att.end());
        add_ffn_rkv_specs(specs, p, "time_maa_", D, F, l.ffn);
    }
    add_output_specs(specs, hp_, &ln_out_w, &ln_out_b, &head);
    add_time_state_specs(specs, *file_, hp_, time_state);
    bind_specs(*file_, specs, entries_, arch_label(hp_.arch));
}

// One LoRA pair of RWKV-7 (x @ w1 @ w2 in the official code), stored as
// (out, in) matrices: w1 (E, D), w2 (D, E).
static void add_lora_specs(std::vector<TensorSpec> & specs, const std::string & p, const char * name, int64_t D, int64_t E,
                    ggml_tensor ** w1, ggml_tensor ** w2) {
    specs.push_back({p + "att." + name + "1", Kind::MATRIX, D, E, w1, TensorRole::LOW_RANK});
    specs.push_back({p + "att." + name + "2", Kind::MATRIX, E, D, w2, TensorRole::LOW_RANK});
}

void Model::bind_tensors_v7() {
    const int64_t D = hp_.n_embed, F = hp_.n_ffn, H = hp_.n_head, N = hp_.head_size;
    static const char * const MIX_NAMES[V7_MIXES] = {"x_r", "x_w", "x_k", "x_v", "x_a", "x_g"};
    std::vector<TensorSpec> specs = embedding_specs(hp_, &emb, &ln0_w, &ln0_b);
    layers_v7.assign(hp_.n_layer, LayerV7());
    for (uint32_t i = 0; i < hp_.n_layer; ++i) {
        const std::string p = format("blocks.%u.", i);
        LayerV7 & l = layers_v7[i];
        add_att_common_specs(specs, p, D, false, l.att);
        for (int m = 0; m < V7_MIXES; ++m) {
            specs.push_back({p + "att." + MIX_NAMES[m], Kind::VECTOR, D, 1, &l.x[m]});
        }
        const std::vector<TensorSpec> att = {
            {p + "att.w0", Kind::VECTOR, D, 1, &l.w0},
            {p + "att.a0", Kind::VECTOR, D, 1, &l.a0},
            {p + "att.k_k", Kind::VECTOR, D, 1, &l.k_k},
            {p + "att.k_a", Kind::VECTOR, D, 1, &l.k_a},
            {p + "att.r_k", Kind::VECTOR, N, H, &l.r_k},
            {p + "ffn.x_k", Kind::VECTOR, D, 1, &l.ffn_x_k},
            {p + "ffn.key.weight", Kind::MATRIX, D, F, &l.ffn_k},
            {p + "ffn.value.weight", Kind::MATRIX, F, D, &l.ffn_v},
        };
        specs.insert(specs.end(), att.begin(), att.end());
        add_lora_specs(specs, p, "w", D, hp_.lora_decay, &l.w1, &l.w2);
        add_lora_specs(specs, p, "a", D, hp_.lora_a, &l.a1, &l.a2);
        add_lora_specs(specs, p, "g", D, hp_.lora_gate, &l.g1, &l.g2);
        if (i > 0) {  // layer 0 makes v_first; its v0/v1/v2 are unused and not stored
            specs.push_back({p + "att.v0", Kind::VECTOR, D, 1, &l.v0});
            add_lora_specs(specs, p, "v", D, hp_.lora_v, &l.v1, &l.v2);
        }
    }
    add_output_specs(specs, hp_, &ln_out_w, &ln_out_b, &head);
    add_time_state_specs(specs, *file_, hp_, time_state);
    bind_specs(*file_, specs, entries_, arch_label(hp_.arch));
}

void Model::map_weights() {
    const FileData & f = file_->file();
    uint8_t * base = const_cast<uint8_t *>(f.data()) + file_->data_offset();
    const size_t size = f.size() - file_->data_offset();
    if (reinterpret_cast<uintptr_t>(base) % WEIGHT_ALIGNMENT != 0) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "tensor data is not %zu-byte aligned", WEIGHT_ALIGNMENT);
    }
    // Check every tensor's bytes first, so that a truncated file fails before
    // anything is bound.
    std::vector<std::pair<ggml_tensor *, const uint8_t *>> bound;
    for (ggml_tensor * t = ggml_get_first_tensor(file_->meta()); t != nullptr;
         t = ggml_get_next_tensor(file_->meta(), t)) {
        const uint8_t * p = file_->tensor_data(t);
        if (reinterpret_cast<uintptr_t>(p) % WEIGHT_ALIGNMENT != 0) {
            fail(RWKV_STATUS_ERROR_FILE_FORMAT, "tensor '%s' is not %zu-byte aligned", ggml_get_name(t),
                 WEIGHT_ALIGNMENT);
        }
        bound.emplace_back(t, p);
    }
    weights_ = ggml_backend_cpu_buffer_from_ptr(base, size == 0 ? 1 : size);
    if (weights_ == nullptr) {
        fail(RWKV_STATUS_ERROR_ALLOC, "cannot create the weight buffer");
    }
    ggml_backend_buffer_set_usage(weights_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    for (auto & tp : bound) {
        if (ggml_backend_tensor_alloc(weights_, tp.first, const_cast<uint8_t *>(tp.second)) != GGML_STATUS_SUCCESS) {
            fail(RWKV_STATUS_ERROR_FILE_FORMAT, "cannot bind tensor '%s'", ggml_get_name(tp.first));
        }
    }
}

// The matrices that go through matrix products (not the embedding; the
// LoRA matrices too: ggml's products of these small matrices cost RWKV-7
// about a tenth of its prefill), packed on all CPUs into one buffer (their
// mapped pages are dropped as packing goes, so resident memory stays about
// the file size), or mapped from a packed-weight cache made by an earlier
// load.  A cache that cannot be written costs a warning, not the load.
void Model::pack_weights(PackedIsa isa, const std::string & cache_path, const std::string & model_path) {
    const auto t_start = std::chrono::steady_clock::now();
    std::vector<ggml_tensor *> todo;
    for (const TensorEntry & e : entries_) {
        const ggml_tensor * t = e.tensor;
        const bool product = e.role == TensorRole::MATRIX || e.role == TensorRole::HEAD || e.role == TensorRole::LOW_RANK;
        if (product && ggml_n_dims(t) == 2 && packable(t->type, t->ne[0])) {
            todo.push_back(e.tensor);
        }
    }
    if (todo.empty()) {
        return;
    }
    // One buffer for all, carved in 64-byte aligned pieces.
    std::vector<size_t> offsets(todo.size() + 1, 0);
    PackedLayoutHash layout;
    for (size_t i = 0; i < todo.size(); ++i) {
        const ggml_tensor * t = todo[i];
        layout.add(ggml_get_name(t), t->type, t->ne[1], t->ne[0], offsets[i]);
        offsets[i + 1] = offsets[i] + PackedMatrix::packed_bytes(t->type, t->ne[1], t->ne[0]);
    }
    PackedCacheKey key;
    const char * how = "packed";
    if (!cache_path.empty()) {
        key = packed_cache_key(model_path, file_->file(), layout.value(), offsets.back());
        std::string why;
        packed_cache_ = PackedCache::open(cache_path, key, why);
        if (packed_cache_ == nullptr) {
            log_.log(RWKV_LOG_LEVEL_INFO, "packed-weight cache '%s' not used (%s): packing", cache_path.c_str(),
                     why.c_str());
        }
    }
    if (packed_cache_ != nullptr) {
        for (size_t i = 0; i < todo.size(); ++i) {
            const ggml_tensor * t = todo[i];
            packed_.emplace(todo[i],
                            PackedMatrix::adopt(t->type, t->ne[1], t->ne[0], packed_cache_->data() + offsets[i], isa));
        }
        how = "mapped from the cache";
    } else {
        pack_into_buffer(todo, offsets, isa);
    }
    packed_isa_ = isa;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    log_.log(RWKV_LOG_LEVEL_INFO, "%s %zu matrices (%.1f MiB) for the %s kernels in %.3f s", how, todo.size(),
             offsets.back() / 1048576.0, packed_isa_name(isa), seconds);
    if (!cache_path.empty() && packed_cache_ == nullptr) {
        try {
            write_packed_cache(cache_path, key, packed_memory_.get());
            log_.log(RWKV_LOG_LEVEL_INFO, "wrote the packed-weight cache '%s'", cache_path.c_str());
        } catch (const Error & e) {
            log_.log(RWKV_LOG_LEVEL_WARN, "cannot write the packed-weight cache: %s", e.what());
        }
    }
}

// Packs todo[i] at offsets[i] of one new buffer, on up to 8 threads.
void Model::pack_into_buffer(const std::vector<ggml_tensor *> & todo, const std::vector<size_t> & offsets,
                             PackedIsa isa) {
    packed_memory_ = allocate_packed(offsets.back());
    if (!packed_memory_) {
        fail(RWKV_STATUS_ERROR_ALLOC, "cannot allocate %zu bytes for the packed weights", offsets.back());
    }
    const FileData & file = file_->file();
    const PackedMatrix::Release release = [&file](const uint8_t * p, size_t n) { file.drop_pages(p, n); };
    std::vector<std::unique_ptr<PackedMatrix>> done(todo.size());
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::string error;
    rwkv_status error_status = RWKV_STATUS_OK;
    std::mutex error_mutex;
    auto record_failure = [&](rwkv_status status, const char * message) {
        std::lock_guard<std::mutex> lock(error_mutex);
        failed = true;
        error = message;
        error_status = status;
    };
    auto worker = [&]() {
        for (size_t i = next++; i < todo.size() && !failed; i = next++) {
            const ggml_tensor * t = todo[i];
            try {
                done[i].reset(new PackedMatrix(t->type, t->ne[1], t->ne[0], t->data,
                                               packed_memory_.get() + offsets[i], release, isa));
            } catch (const Error & e) {
                record_failure(e.status(), e.what());
            } catch (const std::bad_alloc &) {
                record_failure(RWKV_STATUS_ERROR_ALLOC, "out of memory while packing the weights");
            }
        }
    };
    const unsigned n_threads = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < n_threads; ++i) pool.emplace_back(worker);
    worker();
    for (std::thread & th : pool) th.join();
    if (failed) {
        fail(error_status, "%s", error.c_str());
    }
    for (size_t i = 0; i < todo.size(); ++i) {
        packed_.emplace(todo[i], std::move(done[i]));
    }
}

size_t Model::packed_bytes() const {
    size_t bytes = 0;
    for (const auto & entry : packed_) bytes += entry.second->bytes();
    return bytes;
}

const PackedMatrix * Model::packed(const ggml_tensor * t) const {
    auto it = packed_.find(t);
    return it == packed_.end() ? nullptr : it->second.get();
}

size_t Model::state_len() const {
    const size_t L = hp_.n_layer, D = hp_.n_embed;
    if (hp_.arch == Arch::V4) {
        return L * (2 * D + 3 * static_cast<size_t>(hp_.n_att));
    }
    return L * (2 * D + D * hp_.head_size);
}

size_t Model::v4_state_offset(uint32_t layer, V4StateSlot slot) const {
    const size_t D = hp_.n_embed, A = hp_.n_att;
    const size_t per_layer = 2 * D + 3 * A;
    // Slot sizes in order: att_xx D, aa A, bb A, pp A, ffn_xx D.
    static const size_t n_a_before[V4_SLOTS] = {0, 0, 1, 2, 3};
    const size_t n_d_before = slot == V4_ATT_XX ? 0 : 1;
    return layer * per_layer + n_d_before * D + n_a_before[slot] * A;
}

size_t Model::wkv_state_offset(uint32_t layer, WkvStateSlot slot) const {
    // Slot sizes in order: att_xx D, the H matrices of N x N (= D * N), ffn_xx D.
    const size_t D = hp_.n_embed, S = D * hp_.head_size;
    const size_t per_layer = 2 * D + S;
    const size_t before[] = {0, D, D + S};
    return layer * per_layer + before[slot];
}

void Model::init_state(float * state) const {
    std::memset(state, 0, state_len() * sizeof(float));
    if (hp_.arch != Arch::V4) {
        // RWKV-5 and later: all zeros (the official generate_zero_state), or
        // the file's tuned WKV matrices (token shifts stay zero)
        for (uint32_t i = 0; i < time_state.size(); ++i) {
            std::memcpy(state + wkv_state_offset(i, WKV_ATT_STATE), time_state[i]->data, ggml_nbytes(time_state[i]));
        }
        return;
    }
    // Official initial state: zeros, and pp = -1e30 so that the first token's
    // exp(pp - p) vanishes in the max-exponent WKV recurrence.
    constexpr float PP_INIT = -1e30f;
    for (uint32_t i = 0; i < hp_.n_layer; ++i) {
        float * pp = state + v4_state_offset(i, V4_ATT_PP);
        for (uint32_t c = 0; c < hp_.n_att; ++c) {
            pp[c] = PP_INIT;
        }
    }
}

}  // namespace rwkv
