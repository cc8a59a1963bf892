#include "rwkv_file.h"

#include "ggml.h"
#include "gguf.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#ifdef _WIN32
#    ifndef NOMINMAX
#        define NOMINMAX
#    endif
#    ifndef WIN32_LEAN_AND_MEAN
#        define WIN32_LEAN_AND_MEAN
#    endif
#    include <io.h>
#    include <windows.h>
#else
#    include <fcntl.h>
#    include <sys/mman.h>
#    include <sys/stat.h>
#    include <unistd.h>
#endif

namespace rwkv {

namespace {

constexpr size_t BUFFER_ALIGNMENT = 64;  // >= ggml's tensor alignment (32)

// Flushes a stream's written data to the disk (fsync; _commit on Windows).
bool sync_to_disk(FILE * f) {
#ifdef _WIN32
    return _commit(_fileno(f)) == 0;
#else
    return fsync(fileno(f)) == 0;
#endif
}

// Moves `from` onto `to`, replacing `to` if it exists (Windows' rename
// refuses an existing target; MoveFileEx replaces it).
bool replace_file(const std::string & from, const std::string & to) {
#ifdef _WIN32
    return MoveFileExA(from.c_str(), to.c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH) != 0;
#else
    return std::rename(from.c_str(), to.c_str()) == 0;
#endif
}

// The operating system's side of reading a model file, one implementation
// per platform: open read-only (refusing what is not a regular file), the
// size, a read-only shared mapping (null if the file system cannot map), a
// whole read, unmapping, and dropping mapped pages from resident memory.
#ifdef _WIN32

// The last Win32 error as text (FormatMessage, without the trailing newline).
std::string last_os_error() {
    const DWORD code = GetLastError();
    char buf[256];
    DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, nullptr, code, 0, buf,
                             sizeof buf, nullptr);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == '.')) {
        --n;
    }
    return n > 0 ? std::string(buf, n) : format("Windows error %lu", static_cast<unsigned long>(code));
}

// The API's paths are UTF-8; Windows' file functions take UTF-16.
std::wstring widen(const std::string & path) {
    const int n = MultiByteToWideChar(CP_UTF8, 0, path.data(), static_cast<int>(path.size()), nullptr, 0);
    std::wstring w(n > 0 ? static_cast<size_t>(n) : 0, L'\0');
    if (n > 0) {
        MultiByteToWideChar(CP_UTF8, 0, path.data(), static_cast<int>(path.size()), &w[0], n);
    }
    return w;
}

struct OsFile {
    HANDLE handle = INVALID_HANDLE_VALUE;
    ~OsFile() {
        if (handle != INVALID_HANDLE_VALUE) {
            CloseHandle(handle);
        }
    }
};

// Opens `path` for reading into `file`; returns its size.
size_t os_open(const std::string & path, OsFile & file) {
    const std::wstring wpath = widen(path);
    const DWORD attributes = GetFileAttributesW(wpath.c_str());
    if (attributes != INVALID_FILE_ATTRIBUTES && (attributes & FILE_ATTRIBUTE_DIRECTORY) != 0) {
        fail(RWKV_STATUS_ERROR_IO, "'%s' is not a regular file", path.c_str());
    }
    file.handle = CreateFileW(wpath.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                              FILE_ATTRIBUTE_NORMAL, nullptr);
    if (file.handle == INVALID_HANDLE_VALUE) {
        fail(RWKV_STATUS_ERROR_IO, "cannot open '%s': %s", path.c_str(), last_os_error().c_str());
    }
    if (GetFileType(file.handle) != FILE_TYPE_DISK) {
        fail(RWKV_STATUS_ERROR_IO, "'%s' is not a regular file", path.c_str());
    }
    LARGE_INTEGER size;
    if (!GetFileSizeEx(file.handle, &size)) {
        fail(RWKV_STATUS_ERROR_IO, "cannot stat '%s': %s", path.c_str(), last_os_error().c_str());
    }
    return static_cast<size_t>(size.QuadPart);
}

uint8_t * os_map(OsFile & file, size_t size) {
    HANDLE mapping = CreateFileMappingW(file.handle, nullptr, PAGE_READONLY, 0, 0, nullptr);
    if (mapping == nullptr) {
        return nullptr;
    }
    void * p = MapViewOfFile(mapping, FILE_MAP_READ, 0, 0, size);
    CloseHandle(mapping);  // the view keeps the mapping object alive
    return static_cast<uint8_t *>(p);
}

void os_unmap(uint8_t * p, size_t size) { UnmapViewOfFile(p); }

bool os_read_all(OsFile & file, uint8_t * dst, size_t size) {
    size_t done = 0;
    while (done < size) {
        const DWORD chunk = static_cast<DWORD>(std::min<size_t>(size - done, 1u << 30));  // ReadFile: 32-bit counts
        DWORD n = 0;
        if (!ReadFile(file.handle, dst + done, chunk, &n, nullptr) || n == 0) {
            return false;
        }
        done += n;
    }
    return true;
}

size_t os_page_size() {
    SYSTEM_INFO info;
    GetSystemInfo(&info);
    return info.dwPageSize;
}

// VirtualUnlock on pages that are not locked removes them from the working
// set: Windows' counterpart of madvise(MADV_DONTNEED) on a read-only view.
void os_drop_pages(void * p, size_t n) { VirtualUnlock(p, n); }

#else  // POSIX

std::string last_os_error() { return std::strerror(errno); }

struct OsFile {
    int fd = -1;
    ~OsFile() {
        if (fd >= 0) {
            close(fd);
        }
    }
};

// Opens `path` for reading into `file`; returns its size.
size_t os_open(const std::string & path, OsFile & file) {
    file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (file.fd < 0) {
        fail(RWKV_STATUS_ERROR_IO, "cannot open '%s': %s", path.c_str(), last_os_error().c_str());
    }
    struct stat st;
    if (fstat(file.fd, &st) != 0) {
        fail(RWKV_STATUS_ERROR_IO, "cannot stat '%s': %s", path.c_str(), last_os_error().c_str());
    }
    if (!S_ISREG(st.st_mode)) {
        fail(RWKV_STATUS_ERROR_IO, "'%s' is not a regular file", path.c_str());
    }
    return static_cast<size_t>(st.st_size);
}

uint8_t * os_map(OsFile & file, size_t size) {
    void * p = mmap(nullptr, size, PROT_READ, MAP_SHARED, file.fd, 0);
    return p == MAP_FAILED ? nullptr : static_cast<uint8_t *>(p);
}

void os_unmap(uint8_t * p, size_t size) { munmap(p, size); }

bool os_read_all(OsFile & file, uint8_t * dst, size_t size) {
    size_t done = 0;
    while (done < size) {
        const ssize_t n = read(file.fd, dst + done, size - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        done += static_cast<size_t>(n);
    }
    return true;
}

size_t os_page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

void os_drop_pages(void * p, size_t n) { madvise(p, n, MADV_DONTNEED); }

#endif

// ggml reports GGUF parse errors through its global log callback.  While we
// parse, route them into a string so that they become our error message
// instead of being printed.  The mutex keeps concurrent loads consistent.
std::mutex g_ggml_log_mutex;

struct GgmlLogCapture {
    std::string text;
    ggml_log_callback prev_cb = nullptr;
    void * prev_ud = nullptr;

    static void on_log(ggml_log_level level, const char * msg, void * ud) {
        auto * self = static_cast<GgmlLogCapture *>(ud);
        if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_CONT) {
            self->text += msg;
        }
    }
    GgmlLogCapture() {
        ggml_log_get(&prev_cb, &prev_ud);
        ggml_log_set(&GgmlLogCapture::on_log, this);
    }
    ~GgmlLogCapture() { ggml_log_set(prev_cb, prev_ud); }

    std::string message() const {
        std::string s = text;
        while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
            s.pop_back();
        }
        return s.empty() ? std::string("invalid GGUF data") : s;
    }
};

}  // namespace

std::unique_ptr<FileData> FileData::open(const std::string & path, bool use_mmap) {
    OsFile file;
    const size_t size = os_open(path, file);
    std::unique_ptr<FileData> f(new FileData());
    f->size_ = size;
    if (f->size_ == 0) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "'%s' is empty", path.c_str());
    }
    if (use_mmap) {
        f->data_ = os_map(file, f->size_);
        if (f->data_ != nullptr) {
            f->mapped_ = true;
            return f;
        }
        // Fall through to reading (some file systems cannot map).
    }
    f->data_ = static_cast<uint8_t *>(aligned_malloc(BUFFER_ALIGNMENT, f->size_));
    if (f->data_ == nullptr) {
        fail(RWKV_STATUS_ERROR_ALLOC, "cannot allocate %zu bytes to read '%s'", f->size_, path.c_str());
    }
    if (!os_read_all(file, f->data_, f->size_)) {
        fail(RWKV_STATUS_ERROR_IO, "cannot read '%s': %s", path.c_str(), last_os_error().c_str());
    }
    return f;
}

void FileData::drop_pages(const uint8_t * p, size_t n) const {
    if (!mapped_ || n == 0) {
        return;
    }
    const uintptr_t page = static_cast<uintptr_t>(os_page_size());
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
    if (end > begin) {
        os_drop_pages(reinterpret_cast<void *>(begin), end - begin);  // advisory: failure is harmless
    }
}

FileData::~FileData() {
    if (data_ == nullptr) {
        return;
    }
    if (mapped_) {
        os_unmap(data_, size_);
    } else {
        aligned_free(data_);
    }
}

std::unique_ptr<GgufFile> GgufFile::open(const std::string & path, bool use_mmap) {
    std::unique_ptr<GgufFile> g(new GgufFile());
    g->path_ = path;
    g->file_ = FileData::open(path, use_mmap);
    const FileData & f = *g->file_;
    if (f.size() < 4 || std::memcmp(f.data(), "GGUF", 4) != 0) {
        uint32_t magic = 0;
        std::memcpy(&magic, f.data(), f.size() < 4 ? f.size() : 4);
        fail(RWKV_STATUS_ERROR_FILE_FORMAT,
             "'%s' is not a GGUF model file (magic 0x%08x, expected 'GGUF'); "
             "convert checkpoints with: python -m rwkv_cpp.convert", path.c_str(), magic);
    }
    {
        std::lock_guard<std::mutex> lock(g_ggml_log_mutex);
        GgmlLogCapture capture;
        gguf_init_params params = {/*no_alloc =*/ true, /*ctx =*/ &g->meta_};
        g->gguf_ = gguf_init_from_buffer(f.data(), f.size(), params);
        if (g->gguf_ == nullptr) {
            fail(RWKV_STATUS_ERROR_FILE_FORMAT, "'%s': malformed GGUF file: %s", path.c_str(),
                 capture.message().c_str());
        }
    }
    g->data_offset_ = gguf_get_data_offset(g->gguf_);
    if (g->data_offset_ > f.size()) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "'%s': data section starts past the end of the file", path.c_str());
    }
    return g;
}

GgufFile::~GgufFile() {
    if (gguf_ != nullptr) {
        gguf_free(gguf_);
    }
    if (meta_ != nullptr) {
        ggml_free(meta_);
    }
}

bool GgufFile::has_key(const char * key) const { return gguf_find_key(gguf_, key) >= 0; }

static int64_t find_typed_key(gguf_context * g, const char * key, gguf_type type) {
    const int64_t id = gguf_find_key(g, key);
    if (id < 0) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "missing metadata key '%s'", key);
    }
    const gguf_type found = gguf_get_kv_type(g, id);
    if (found != type) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "metadata key '%s' has type %s, expected %s", key,
             gguf_type_name(found), gguf_type_name(type));
    }
    return id;
}

uint32_t GgufFile::get_u32(const char * key) const {
    return gguf_get_val_u32(gguf_, find_typed_key(gguf_, key, GGUF_TYPE_UINT32));
}

float GgufFile::get_f32(const char * key) const {
    return gguf_get_val_f32(gguf_, find_typed_key(gguf_, key, GGUF_TYPE_FLOAT32));
}

bool GgufFile::get_bool(const char * key) const {
    return gguf_get_val_bool(gguf_, find_typed_key(gguf_, key, GGUF_TYPE_BOOL));
}

std::string GgufFile::get_str(const char * key) const {
    return gguf_get_val_str(gguf_, find_typed_key(gguf_, key, GGUF_TYPE_STRING));
}

int64_t GgufFile::n_tensors() const { return gguf_get_n_tensors(gguf_); }

const char * GgufFile::tensor_name(int64_t id) const { return gguf_get_tensor_name(gguf_, id); }

ggml_tensor * GgufFile::find_tensor(const char * name) const { return ggml_get_tensor(meta_, name); }

const uint8_t * GgufFile::tensor_data(const ggml_tensor * tensor) const {
    const int64_t id = gguf_find_tensor(gguf_, ggml_get_name(tensor));
    if (id < 0) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT, "tensor '%s' is not in the file", ggml_get_name(tensor));
    }
    const uint64_t offset = gguf_get_tensor_offset(gguf_, id);
    const uint64_t nbytes = ggml_nbytes(tensor);
    const uint64_t begin = data_offset_ + offset;
    if (offset > file_->size() || begin > file_->size() || nbytes > file_->size() - begin) {
        fail(RWKV_STATUS_ERROR_FILE_FORMAT,
             "tensor '%s' (%llu bytes at offset %llu) extends past the end of the file (%zu bytes): "
             "the file is truncated", ggml_get_name(tensor), static_cast<unsigned long long>(nbytes),
             static_cast<unsigned long long>(begin), file_->size());
    }
    return file_->data() + begin;
}


OutputFile::OutputFile(const std::string & path, const std::string & tmp_suffix)
    : path_(path), tmp_(path + tmp_suffix) {
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (f_ == nullptr) {
        fail(RWKV_STATUS_ERROR_IO, "cannot create '%s': %s", tmp_.c_str(), std::strerror(errno));
    }
}

OutputFile::~OutputFile() {
    if (f_ != nullptr) {
        std::fclose(f_);
        std::remove(tmp_.c_str());
    }
}

void OutputFile::write(const void * data, size_t n) {
    if (n != 0 && std::fwrite(data, 1, n, f_) != n) {
        fail(RWKV_STATUS_ERROR_IO, "cannot write '%s': %s", tmp_.c_str(), std::strerror(errno));
    }
    written_ += n;
}

void OutputFile::pad_to(size_t alignment) {
    static const char zeros[64] = {0};
    size_t n = (alignment - written_ % alignment) % alignment;
    while (n > 0) {
        const size_t k = std::min(n, sizeof zeros);
        write(zeros, k);
        n -= k;
    }
}

void OutputFile::commit() {
    const bool ok = std::fflush(f_) == 0 && sync_to_disk(f_);
    const bool closed = std::fclose(f_) == 0;
    f_ = nullptr;
    if (!ok || !closed || !replace_file(tmp_, path_)) {
        std::remove(tmp_.c_str());
        fail(RWKV_STATUS_ERROR_IO, "cannot write '%s': %s", path_.c_str(), std::strerror(errno));
    }
}

}  // namespace rwkv
