#include "rwkv_model.h"

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <cstring>
#include <set>

namespace rwkv {

namespace {

constexpr uint32_t FORMAT_VERSION = 1;
// Generous sanity limits for sizes read from the file (checked before use).
constexpr uint32_t MAX_VOCAB = 1u << 24;
constexpr uint32_t MAX_EMBED = 1u << 16;
constexpr uint32_t MAX_LAYER = 1u << 12;
constexpr size_t WEIGHT_ALIGNMENT = 32;  // ggml CPU buffers need 32-byte aligned data

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

std::string shape_str(int64_t ne0, int64_t ne1) {
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
    if (t->ne[0] != spec.ne0 || t->ne[1] != spec.ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "tensor '%s' has shape %s, expected %s (ggml order)",
             spec.name.c_str(), shape_str(t).c_str(), shape_str(spec.ne0, spec.ne1).c_str());
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

}  // namespace

std::unique_ptr<Model> Model::load(const std::string & path, const rwkv_model_params & params) {
    std::unique_ptr<Model> m(new Model());
    m->log_.callback = params.log_callback;
    m->log_.user_data = params.log_user_data;
    m->file_ = GgufFile::open(path, params.use_mmap);
    m->read_hparams();
    m->bind_tensors_v4();
    m->map_weights();
    m->log_.log(RWKV_LOG_LEVEL_INFO, "loaded '%s': RWKV-%s, n_vocab %u, n_embed %u, n_layer %u, %s",
                path.c_str(), m->hp_.version.c_str(), m->hp_.n_vocab, m->hp_.n_embed, m->hp_.n_layer,
                rwkv_type_str(m->hp_.file_type));
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
    const uint32_t format_version = f.get_u32("rwkv.format_version");
    if (format_version != FORMAT_VERSION) {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED, "file format version %u is not supported (this build reads %u)",
             format_version, FORMAT_VERSION);
    }
    hp_.version = f.get_str("rwkv.version");
    if (arch != "rwkv4" || hp_.version != "4") {
        fail(RWKV_STATUS_ERROR_UNSUPPORTED,
             "model architecture '%s' (RWKV version '%s') is not supported: this build runs RWKV-4",
             arch.c_str(), hp_.version.c_str());
    }
    hp_.arch = Arch::V4;
    hp_.n_vocab = f.get_u32("rwkv.n_vocab");
    hp_.n_embed = f.get_u32("rwkv.n_embed");
    hp_.n_layer = f.get_u32("rwkv.n_layer");
    hp_.n_att = f.get_u32("rwkv.n_att");
    hp_.n_ffn = f.get_u32("rwkv.n_ffn");
    check_range("rwkv.n_vocab", hp_.n_vocab, 1, MAX_VOCAB);
    check_range("rwkv.n_embed", hp_.n_embed, 1, MAX_EMBED);
    check_range("rwkv.n_layer", hp_.n_layer, 1, MAX_LAYER);
    check_range("rwkv.n_att", hp_.n_att, 1, MAX_EMBED);
    check_range("rwkv.n_ffn", hp_.n_ffn, 1, 16 * MAX_EMBED);
    hp_.ln_eps = f.get_f32("rwkv.layer_norm_epsilon");
    if (!(hp_.ln_eps > 0.0f && hp_.ln_eps < 1.0f)) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "metadata 'rwkv.layer_norm_epsilon' = %g is out of range", hp_.ln_eps);
    }
    const uint32_t ftype = f.get_u32("general.file_type");
    check_range("general.file_type", ftype, RWKV_TYPE_FP32, RWKV_TYPE_Q4_1);
    hp_.file_type = static_cast<rwkv_type>(ftype);
    hp_.tokenizer = f.has_key("rwkv.tokenizer") ? f.get_str("rwkv.tokenizer") : std::string();
    hp_.emb_ln0_applied = f.get_bool("rwkv.emb_ln0_applied");
}

void Model::bind_tensors_v4() {
    const int64_t D = hp_.n_embed, A = hp_.n_att, F = hp_.n_ffn, V = hp_.n_vocab;
    std::vector<TensorSpec> specs = {{"emb.weight", Kind::MATRIX, D, V, &emb, TensorRole::EMBEDDING}};
    if (!hp_.emb_ln0_applied) {
        specs.push_back({"blocks.0.ln0.weight", Kind::VECTOR, D, 1, &ln0_w});
        specs.push_back({"blocks.0.ln0.bias", Kind::VECTOR, D, 1, &ln0_b});
    }
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
            {p + "ffn.time_mix_k", Kind::VECTOR, D, 1, &l.ffn_mix_k},
            {p + "ffn.time_mix_r", Kind::VECTOR, D, 1, &l.ffn_mix_r},
            {p + "ffn.key.weight", Kind::MATRIX, D, F, &l.ffn_k},
            {p + "ffn.receptance.weight", Kind::MATRIX, D, D, &l.ffn_r},
            {p + "ffn.value.weight", Kind::MATRIX, F, D, &l.ffn_v},
        };
        specs.insert(specs.end(), layer_specs.begin(), layer_specs.end());
    }
    specs.push_back({"ln_out.weight", Kind::VECTOR, D, 1, &ln_out_w});
    specs.push_back({"ln_out.bias", Kind::VECTOR, D, 1, &ln_out_b});
    specs.push_back({"head.weight", Kind::MATRIX, D, V, &head, TensorRole::HEAD});

    std::set<std::string> expected;
    for (const TensorSpec & s : specs) {
        ggml_tensor * t = file_->find_tensor(s.name.c_str());
        if (t == nullptr) {
            fail(RWKV_STATUS_ERROR_FILE_FORMAT, "missing tensor '%s' (expected shape %s)", s.name.c_str(),
                 shape_str(s.ne0, s.ne1).c_str());
        }
        check_tensor(t, s);
        *s.slot = t;
        expected.insert(s.name);
        entries_.push_back({s.name, role_of(s), t});
    }
    for (int64_t i = 0; i < file_->n_tensors(); ++i) {
        const char * name = file_->tensor_name(i);
        if (expected.count(name) == 0) {
            fail(RWKV_STATUS_ERROR_FILE_FORMAT, "unexpected tensor '%s' in an RWKV-4 file", name);
        }
    }
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

size_t Model::state_len() const {
    return static_cast<size_t>(hp_.n_layer) * (2 * static_cast<size_t>(hp_.n_embed) + 3 * static_cast<size_t>(hp_.n_att));
}

size_t Model::v4_state_offset(uint32_t layer, V4StateSlot slot) const {
    const size_t D = hp_.n_embed, A = hp_.n_att;
    const size_t per_layer = 2 * D + 3 * A;
    // Slot sizes in order: att_xx D, aa A, bb A, pp A, ffn_xx D.
    static const size_t n_a_before[V4_SLOTS] = {0, 0, 1, 2, 3};
    const size_t n_d_before = slot == V4_ATT_XX ? 0 : 1;
    return layer * per_layer + n_d_before * D + n_a_before[slot] * A;
}

void Model::init_state(float * state) const {
    // Official initial state: zeros, and pp = -1e30 so that the first token's
    // exp(pp - p) vanishes in the max-exponent WKV recurrence.
    constexpr float PP_INIT = -1e30f;
    std::memset(state, 0, state_len() * sizeof(float));
    for (uint32_t i = 0; i < hp_.n_layer; ++i) {
        float * pp = state + v4_state_offset(i, V4_ATT_PP);
        for (uint32_t c = 0; c < hp_.n_att; ++c) {
            pp[c] = PP_INIT;
        }
    }
}

}  // namespace rwkv
