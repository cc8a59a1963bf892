// The packed-weight cache (rwkv_model_params.packed_cache): a file holding a
// model's packed matrices byte for byte as Model::pack_weights lays them out
// in its buffer, so that a later load maps the file instead of packing.
// Packing itself is quick; what a load pays is fresh memory (the kernel
// zeroes every page of the packed buffer, about 0.7 GB/s on a VM), while a
// cached file's pages come from the page cache.
//
// File layout (little-endian):
//   a 64-byte header (magic "RWKVPCK1", format version, data offset and the
//   PackedCacheKey below), zero bytes up to the data offset (2 MiB, so that
//   the data may be mapped with huge pages), then the packed bytes.
// A cache is used only if every field of its header equals the one computed
// for the model being loaded: the format version, the model file's size,
// modification time and a hash of its first MiB, a hash of the packed layout
// (every matrix's name, type, shape and offset) and the byte count; the file
// must be exactly DATA_OFFSET + data_bytes long.  There is no checksum of
// the data (as there is none of a model file's tensors).
#pragma once

#include "rwkv_file.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace rwkv {

// What a cache file must match.
struct PackedCacheKey {
    uint64_t source_size = 0;
    int64_t source_mtime = 0;        // the file clock's ticks
    uint64_t source_head_hash = 0;   // FNV-1a of the model file's first MiB
    uint64_t layout_hash = 0;        // FNV-1a of the packed layout (PackedLayoutHash)
    uint64_t data_bytes = 0;
};

// Builds PackedCacheKey::layout_hash, one matrix at a time.
class PackedLayoutHash {
public:
    PackedLayoutHash();
    void add(const char * name, int type, int64_t rows, int64_t cols, uint64_t offset);
    uint64_t value() const { return h_; }

private:
    void mix(const void * data, size_t n);
    uint64_t h_;
};

// The key of the model file at path (data: its bytes) for a packed layout.
PackedCacheKey packed_cache_key(const std::string & path, const FileData & data, uint64_t layout_hash,
                                uint64_t data_bytes);

class PackedCache {
public:
    // The cache at path when it exists and matches key; otherwise null, and
    // reason says why (absent, another model or layout, a damaged header).
    static std::unique_ptr<PackedCache> open(const std::string & path, const PackedCacheKey & key,
                                             std::string & reason);
    // The packed bytes (key.data_bytes of them), mapped read-only.
    const uint8_t * data() const { return data_; }

private:
    PackedCache() = default;
    std::unique_ptr<FileData> file_;
    const uint8_t * data_ = nullptr;
};

// Writes the cache for key holding data (key.data_bytes), atomically
// (OutputFile); throws an IO error on failure.
void write_packed_cache(const std::string & path, const PackedCacheKey & key, const uint8_t * data);

}  // namespace rwkv
