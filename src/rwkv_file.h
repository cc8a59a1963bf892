// File layer: opens a model file, validates the GGUF container, and gives
// read-only access to its metadata and to the bytes of every tensor
// (memory-mapped, or read into an aligned buffer).
#pragma once

#include "rwkv_common.h"

#include <cstddef>
#include <cstdio>
#include <cstdint>
#include <memory>
#include <string>

struct gguf_context;
struct ggml_context;
struct ggml_tensor;

namespace rwkv {

// The bytes of a file, memory-mapped or read.
class FileData {
public:
    static std::unique_ptr<FileData> open(const std::string & path, bool use_mmap);
    ~FileData();
    FileData(const FileData &) = delete;
    FileData & operator=(const FileData &) = delete;

    const uint8_t * data() const { return data_; }
    size_t size() const { return size_; }
    // Tells the kernel that [p, p + n) of a mapped file will not be read
    // again: its whole pages leave the process's resident memory (they stay
    // in the page cache).  Does nothing for a file read into memory.
    void drop_pages(const uint8_t * p, size_t n) const;

private:
    FileData() = default;
    uint8_t * data_ = nullptr;
    size_t size_ = 0;
    bool mapped_ = false;
};

// A file written under a temporary name (path + tmp_suffix) and renamed
// onto path by commit() (flushed to the disk first), so that path never
// holds a partial file; removed unless committed.  Failures throw IO errors.
class OutputFile {
public:
    explicit OutputFile(const std::string & path, const std::string & tmp_suffix = ".tmp");
    ~OutputFile();
    OutputFile(const OutputFile &) = delete;
    OutputFile & operator=(const OutputFile &) = delete;

    void write(const void * data, size_t n);
    // Zero bytes up to the next multiple of alignment.
    void pad_to(size_t alignment);
    void commit();
    size_t written() const { return written_; }

private:
    std::string path_, tmp_;
    FILE * f_ = nullptr;
    size_t written_ = 0;
};

// A parsed GGUF file: metadata, tensor descriptions (in a no-alloc ggml
// context) and checked access to the raw tensor bytes.
class GgufFile {
public:
    static std::unique_ptr<GgufFile> open(const std::string & path, bool use_mmap);
    ~GgufFile();
    GgufFile(const GgufFile &) = delete;
    GgufFile & operator=(const GgufFile &) = delete;

    // Metadata getters: fail with a FILE_FORMAT error naming the key when it
    // is missing or of another type.
    uint32_t get_u32(const char * key) const;
    float get_f32(const char * key) const;
    bool get_bool(const char * key) const;
    std::string get_str(const char * key) const;
    bool has_key(const char * key) const;

    int64_t n_tensors() const;
    const char * tensor_name(int64_t id) const;
    // Tensor of the metadata context (shape, type; no data) or nullptr.
    ggml_tensor * find_tensor(const char * name) const;
    // Pointer to the tensor's bytes, checked against the file size.
    const uint8_t * tensor_data(const ggml_tensor * tensor) const;

    const FileData & file() const { return *file_; }
    size_t data_offset() const { return data_offset_; }
    ggml_context * meta() const { return meta_; }
    const gguf_context * gguf() const { return gguf_; }

private:
    GgufFile() = default;
    std::unique_ptr<FileData> file_;
    gguf_context * gguf_ = nullptr;
    ggml_context * meta_ = nullptr;
    size_t data_offset_ = 0;
    std::string path_;
};

}  // namespace rwkv
