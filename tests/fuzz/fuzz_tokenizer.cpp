// libFuzzer harness of the World (greedy longest-match) tokenizer.
//
// Input: byte 0 = fault (bits 6-7) and number of extra entries (bits 0-5);
// then each extra entry as a length byte (1 + value % 16 bytes) and its
// bytes; the rest is the text.  The vocabulary is the 256 single bytes plus
// the distinct extra entries.  With a fault (a missing single byte, a
// duplicate entry, an empty entry) rwkv_tokenizer_init must refuse with a
// message.  Without, encoding the text must succeed, the entries of the ids
// must concatenate back to the text (the decode contract), each id must be
// the longest entry that prefixes the rest of the text (checked naively),
// and a short output buffer must give the same count and the same prefix.
#include "fuzz_util.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <vector>

namespace {

enum Fault { NO_FAULT = 0, MISSING_BYTE = 1, DUPLICATE = 2, EMPTY_ENTRY = 3 };

constexpr size_t MAX_EXTRA_LENGTH = 16;

struct Vocabulary {
    std::vector<std::string> entries;  // entry i has id i
};

// Reads the extra entries; returns the offset of the text.
size_t read_entries(const uint8_t * data, size_t size, size_t n_extra, std::vector<std::string> & extra) {
    size_t pos = 1;
    std::set<std::string> seen;
    for (size_t i = 0; i < n_extra && pos < size; i++) {
        const size_t length = std::min<size_t>(1 + data[pos] % MAX_EXTRA_LENGTH, size - pos - 1);
        pos++;
        std::string e(reinterpret_cast<const char *>(data + pos), length);
        pos += length;
        if (e.size() >= 2 && seen.insert(e).second) {
            extra.push_back(e);
        }
    }
    return std::min(pos, size);
}

Vocabulary make_vocabulary(const std::vector<std::string> & extra, Fault fault, uint8_t missing) {
    Vocabulary v;
    for (int b = 0; b < 256; b++) {
        if (!(fault == MISSING_BYTE && b == missing)) {
            v.entries.push_back(std::string(1, static_cast<char>(b)));
        }
    }
    v.entries.insert(v.entries.end(), extra.begin(), extra.end());
    if (fault == DUPLICATE) {
        v.entries.push_back(v.entries[missing % v.entries.size()]);
    } else if (fault == EMPTY_ENTRY) {
        v.entries.push_back(std::string());
    }
    return v;
}

rwkv_tokenizer * init_tokenizer(const Vocabulary & v, char * error, size_t error_size) {
    std::string data;
    std::vector<uint32_t> lengths, ids;
    for (size_t i = 0; i < v.entries.size(); i++) {
        data += v.entries[i];
        lengths.push_back(static_cast<uint32_t>(v.entries[i].size()));
        ids.push_back(static_cast<uint32_t>(i));
    }
    rwkv_tokenizer * tok = nullptr;
    const rwkv_status status = rwkv_tokenizer_init(reinterpret_cast<const uint8_t *>(data.data()), data.size(),
                                                   lengths.data(), ids.data(), ids.size(), &tok, error, error_size);
    FUZZ_CHECK((status == RWKV_STATUS_OK) == (tok != nullptr));
    return tok;
}

// The longest entry that prefixes text[0, n), by trying them all.
size_t naive_longest(const Vocabulary & v, const uint8_t * text, size_t n) {
    size_t best = 0;
    for (const std::string & e : v.entries) {
        if (e.size() > best && e.size() <= n && std::memcmp(e.data(), text, e.size()) == 0) {
            best = e.size();
        }
    }
    return best;
}

void check_encoding(const rwkv_tokenizer * tok, const Vocabulary & v, const uint8_t * text, size_t n) {
    std::vector<uint32_t> ids(n);
    size_t n_ids = 0;
    FUZZ_CHECK(rwkv_tokenizer_encode(tok, text, n, ids.data(), n, &n_ids) == RWKV_STATUS_OK);
    FUZZ_CHECK(n_ids <= n);
    size_t pos = 0;
    for (size_t i = 0; i < n_ids; i++) {
        FUZZ_CHECK(ids[i] < v.entries.size());
        const std::string & e = v.entries[ids[i]];
        FUZZ_CHECK(e.size() <= n - pos && std::memcmp(e.data(), text + pos, e.size()) == 0);
        FUZZ_CHECK(e.size() == naive_longest(v, text + pos, n - pos));
        pos += e.size();
    }
    FUZZ_CHECK(pos == n);  // decode(encode(text)) == text
    if (n_ids > 0) {
        std::vector<uint32_t> short_ids(n_ids - 1);  // exact: ASan sees a write past it
        size_t count = 0;
        FUZZ_CHECK(rwkv_tokenizer_encode(tok, text, n, short_ids.data(), n_ids - 1, &count) ==
                   RWKV_STATUS_ERROR_INVALID_ARGUMENT);
        FUZZ_CHECK(count == n_ids);
        FUZZ_CHECK(std::equal(short_ids.begin(), short_ids.begin() + (n_ids - 1), ids.begin()));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size == 0) {
        return 0;
    }
    const Fault fault = static_cast<Fault>(data[0] >> 6);
    std::vector<std::string> extra;
    const size_t text_at = read_entries(data, size, data[0] & 0x3f, extra);
    const Vocabulary v = make_vocabulary(extra, fault, size > 1 ? data[1] : 0);
    char error[256] = {0};
    rwkv_tokenizer * tok = init_tokenizer(v, error, sizeof(error));
    if (fault != NO_FAULT) {
        FUZZ_CHECK(tok == nullptr && error[0] != '\0');
        return 0;
    }
    FUZZ_CHECK(tok != nullptr);
    check_encoding(tok, v, data + text_at, size - text_at);
    rwkv_tokenizer_free(tok);
    return 0;
}
