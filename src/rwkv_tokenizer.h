// Greedy longest-match tokenizer over bytes (the RWKV "World" tokenizer):
// at each position, emit the longest vocabulary entry that is a prefix of the
// remaining input.  This is exactly what the official TRIE_TOKENIZER does.
// The vocabulary is given by the caller (the Python package parses the
// vocabulary file); this layer only stores it as a compact trie.
#pragma once

#include "rwkv_common.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace rwkv {

class Tokenizer {
public:
    // n_tokens entries; entry i is the bytes data[offset_i, offset_i + lengths[i])
    // where the entries lie back to back in data, and has id ids[i].  Every
    // entry must be non-empty and distinct, and every single byte value must
    // be an entry (so that any input can be encoded).  Throws rwkv::Error.
    Tokenizer(const uint8_t * data, size_t data_size, const uint32_t * lengths, const uint32_t * ids,
              size_t n_tokens);

    // Encodes text; writes min(count, capacity) ids to out and returns the
    // count.  The count never exceeds n_bytes (each id covers >= 1 byte).
    size_t encode(const uint8_t * text, size_t n_bytes, uint32_t * out, size_t capacity) const;

private:
    static constexpr uint32_t NO_NODE = UINT32_MAX;
    static constexpr int64_t NO_TOKEN = -1;
    static constexpr size_t N_BYTE_VALUES = 256;

    // The trie in compressed-row form: the children of node n are
    // child_byte/child_node[child_begin[n], child_begin[n + 1]), sorted by
    // byte; the root's children are also in a direct 256-entry table.
    std::vector<int64_t> token_of_node_;  // id of the entry ending at a node, or NO_TOKEN
    std::vector<uint32_t> child_begin_;
    std::vector<uint8_t> child_byte_;
    std::vector<uint32_t> child_node_;
    uint32_t root_child_[N_BYTE_VALUES];

    uint32_t child(uint32_t node, uint8_t byte) const;
    // Longest entry at text[0, n): returns its length (>= 1), sets *id.
    size_t longest_match(const uint8_t * text, size_t n, uint32_t * id) const;
};

}  // namespace rwkv
