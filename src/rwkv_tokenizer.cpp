#include "rwkv_tokenizer.h"

#include <algorithm>
#include <tuple>
#include <unordered_map>

namespace rwkv {

namespace {

// One edge of the trie while it is being built.
struct Edge {
    uint32_t parent;
    uint8_t byte;
    uint32_t node;
};

// The trie as a hash map of edges (parent, byte) -> node, while inserting.
struct TrieBuilder {
    std::unordered_map<uint64_t, uint32_t> edges;
    std::vector<int64_t> token_of_node{-1};  // node 0 is the root

    static uint64_t key(uint32_t parent, uint8_t byte) { return (static_cast<uint64_t>(parent) << 8) | byte; }

    // Inserts one entry; fails if the same bytes were given before.
    void insert(const uint8_t * bytes, size_t length, uint32_t id) {
        uint32_t node = 0;
        for (size_t i = 0; i < length; i++) {
            auto inserted = edges.emplace(key(node, bytes[i]), static_cast<uint32_t>(token_of_node.size()));
            if (inserted.second) {
                token_of_node.push_back(-1);
            }
            node = inserted.first->second;
        }
        if (token_of_node[node] >= 0) {
            fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "tokenizer: ids %lld and %u have the same bytes",
                 static_cast<long long>(token_of_node[node]), id);
        }
        token_of_node[node] = id;
    }

    // Edges sorted by (parent, byte): the compressed-row order.
    std::vector<Edge> sorted_edges() const {
        std::vector<Edge> out;
        out.reserve(edges.size());
        for (const auto & e : edges) {
            out.push_back(Edge{static_cast<uint32_t>(e.first >> 8), static_cast<uint8_t>(e.first & 0xff), e.second});
        }
        std::sort(out.begin(), out.end(), [](const Edge & a, const Edge & b) {
            return std::tie(a.parent, a.byte) < std::tie(b.parent, b.byte);
        });
        return out;
    }
};

void check_vocabulary(size_t data_size, const uint32_t * lengths, size_t n_tokens) {
    uint64_t total = 0;
    for (size_t i = 0; i < n_tokens; i++) {
        if (lengths[i] == 0) {
            fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "tokenizer: entry %zu is empty", i);
        }
        total += lengths[i];  // cannot wrap: n_tokens <= UINT32_MAX (checked by the caller)
    }
    if (total != data_size) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "tokenizer: the entry lengths sum to %llu bytes, data has %zu",
             static_cast<unsigned long long>(total), data_size);
    }
}

}  // namespace

Tokenizer::Tokenizer(const uint8_t * data, size_t data_size, const uint32_t * lengths, const uint32_t * ids,
                     size_t n_tokens) {
    if (n_tokens == 0 || lengths == nullptr || ids == nullptr || (data == nullptr && data_size > 0)) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "tokenizer: empty vocabulary or NULL array");
    }
    if (n_tokens > UINT32_MAX) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "tokenizer: too many entries (%zu)", n_tokens);
    }
    check_vocabulary(data_size, lengths, n_tokens);

    TrieBuilder builder;
    size_t offset = 0;
    for (size_t i = 0; i < n_tokens; i++) {
        builder.insert(data + offset, lengths[i], ids[i]);
        offset += lengths[i];
    }
    if (builder.token_of_node.size() > NO_NODE) {
        fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "tokenizer: vocabulary too large");
    }

    const std::vector<Edge> edges = builder.sorted_edges();
    token_of_node_ = std::move(builder.token_of_node);
    const size_t n_nodes = token_of_node_.size();
    child_begin_.assign(n_nodes + 1, 0);
    child_byte_.resize(edges.size());
    child_node_.resize(edges.size());
    for (size_t e = 0; e < edges.size(); e++) {
        child_begin_[edges[e].parent + 1]++;
        child_byte_[e] = edges[e].byte;
        child_node_[e] = edges[e].node;
    }
    for (size_t n = 0; n < n_nodes; n++) {
        child_begin_[n + 1] += child_begin_[n];
    }

    std::fill(std::begin(root_child_), std::end(root_child_), NO_NODE);
    for (uint32_t e = child_begin_[0]; e < child_begin_[1]; e++) {
        root_child_[child_byte_[e]] = child_node_[e];
    }
    for (size_t b = 0; b < N_BYTE_VALUES; b++) {
        if (root_child_[b] == NO_NODE || token_of_node_[root_child_[b]] < 0) {
            fail(RWKV_STATUS_ERROR_INVALID_ARGUMENT, "tokenizer: the single byte 0x%02zx is not an entry", b);
        }
    }
}

uint32_t Tokenizer::child(uint32_t node, uint8_t byte) const {
    const uint8_t * first = child_byte_.data() + child_begin_[node];
    const uint8_t * last = child_byte_.data() + child_begin_[node + 1];
    const uint8_t * it = std::lower_bound(first, last, byte);
    if (it == last || *it != byte) {
        return NO_NODE;
    }
    return child_node_[static_cast<size_t>(it - child_byte_.data())];
}

size_t Tokenizer::longest_match(const uint8_t * text, size_t n, uint32_t * id) const {
    // Every single byte is an entry (checked at construction), so the match
    // has length >= 1; then walk down as far as the trie goes, remembering
    // the deepest node that ends an entry.
    uint32_t node = root_child_[text[0]];
    size_t best = 1;
    *id = static_cast<uint32_t>(token_of_node_[node]);
    for (size_t i = 1; i < n; i++) {
        node = child(node, text[i]);
        if (node == NO_NODE) {
            break;
        }
        if (token_of_node_[node] >= 0) {
            best = i + 1;
            *id = static_cast<uint32_t>(token_of_node_[node]);
        }
    }
    return best;
}

size_t Tokenizer::encode(const uint8_t * text, size_t n_bytes, uint32_t * out, size_t capacity) const {
    size_t count = 0;
    size_t pos = 0;
    while (pos < n_bytes) {
        uint32_t id;
        pos += longest_match(text + pos, n_bytes - pos, &id);
        if (count < capacity) {
            out[count] = id;
        }
        count++;
    }
    return count;
}

}  // namespace rwkv
