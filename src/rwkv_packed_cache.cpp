#include "rwkv_packed_cache.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <system_error>

namespace rwkv {

namespace {

constexpr char MAGIC[8] = {'R', 'W', 'K', 'V', 'P', 'C', 'K', '1'};
// Bump when PackedMatrix's layout or this file's layout changes.
constexpr uint32_t FORMAT_VERSION = 1;
constexpr uint64_t DATA_OFFSET = uint64_t(2) << 20;
constexpr size_t HEAD_HASH_BYTES = size_t(1) << 20;
constexpr uint64_t FNV_OFFSET = 0xcbf29ce484222325ull, FNV_PRIME = 0x100000001b3ull;

struct Header {
    char magic[8];
    uint32_t version;
    uint32_t reserved;
    uint64_t data_offset;
    PackedCacheKey key;
};
static_assert(sizeof(Header) == 64, "the cache header is 64 bytes");

uint64_t fnv1a(uint64_t h, const void * data, size_t n) {
    const auto * p = static_cast<const uint8_t *>(data);
    for (size_t i = 0; i < n; ++i) {
        h = (h ^ p[i]) * FNV_PRIME;
    }
    return h;
}

bool same_key(const PackedCacheKey & a, const PackedCacheKey & b) {
    return a.source_size == b.source_size && a.source_mtime == b.source_mtime &&
           a.source_head_hash == b.source_head_hash && a.layout_hash == b.layout_hash &&
           a.data_bytes == b.data_bytes;
}

}  // namespace

PackedLayoutHash::PackedLayoutHash() : h_(FNV_OFFSET) { mix(&FORMAT_VERSION, sizeof FORMAT_VERSION); }

void PackedLayoutHash::mix(const void * data, size_t n) { h_ = fnv1a(h_, data, n); }

void PackedLayoutHash::add(const char * name, int type, int64_t rows, int64_t cols, uint64_t offset) {
    mix(name, std::strlen(name) + 1);
    mix(&type, sizeof type);
    mix(&rows, sizeof rows);
    mix(&cols, sizeof cols);
    mix(&offset, sizeof offset);
}

PackedCacheKey packed_cache_key(const std::string & path, const FileData & data, uint64_t layout_hash,
                                uint64_t data_bytes) {
    PackedCacheKey key;
    std::error_code ec;
    const auto mtime = std::filesystem::last_write_time(path, ec);
    key.source_mtime = ec ? 0 : static_cast<int64_t>(mtime.time_since_epoch().count());
    key.source_size = data.size();
    key.source_head_hash = fnv1a(FNV_OFFSET, data.data(), std::min(data.size(), HEAD_HASH_BYTES));
    key.layout_hash = layout_hash;
    key.data_bytes = data_bytes;
    return key;
}

std::unique_ptr<PackedCache> PackedCache::open(const std::string & path, const PackedCacheKey & key,
                                               std::string & reason) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
        reason = "absent";
        return nullptr;
    }
    std::unique_ptr<PackedCache> cache(new PackedCache());
    try {
        cache->file_ = FileData::open(path, true);
    } catch (const Error & e) {
        reason = e.what();
        return nullptr;
    }
    const FileData & f = *cache->file_;
    Header h;
    if (f.size() < sizeof h) {
        reason = "too short for a header";
        return nullptr;
    }
    std::memcpy(&h, f.data(), sizeof h);
    if (std::memcmp(h.magic, MAGIC, sizeof MAGIC) != 0) {
        reason = "not a packed-weight cache";
    } else if (h.version != FORMAT_VERSION) {
        reason = format("format version %u, this library writes %u", h.version, FORMAT_VERSION);
    } else if (!same_key(h.key, key)) {
        reason = "made from another model file or packed layout";
    } else if (h.data_offset != DATA_OFFSET || f.size() != DATA_OFFSET + key.data_bytes) {
        reason = "truncated or damaged";
    } else {
        cache->data_ = f.data() + DATA_OFFSET;
        return cache;
    }
    return nullptr;
}

void write_packed_cache(const std::string & path, const PackedCacheKey & key, const uint8_t * data) {
    Header h;
    std::memset(&h, 0, sizeof h);
    std::memcpy(h.magic, MAGIC, sizeof MAGIC);
    h.version = FORMAT_VERSION;
    h.data_offset = DATA_OFFSET;
    h.key = key;
    // A name of this writer's own: two processes may fill the same cache.
    std::random_device random;
    OutputFile out(path, format(".tmp%08x%08x", random(), random()));
    out.write(&h, sizeof h);
    out.pad_to(DATA_OFFSET);
    out.write(data, key.data_bytes);
    out.commit();
}

}  // namespace rwkv
