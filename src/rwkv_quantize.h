// Quantization of a model file: reads a GGUF model, writes a new one whose
// matrices are stored in another type, streaming tensor by tensor.
#pragma once

#include "rwkv_common.h"

#include <string>

namespace rwkv {

void quantize_file(const std::string & in, const std::string & out, rwkv_type target,
                   const rwkv_quantize_params & params);

// Rows of float32 values (n_rows x n_per_row, row-major) stored as `target`
// into dst (dst_size bytes), exactly as quantize_file stores a tensor: the
// converter writes quantized files through it in one step.
void quantize_rows(rwkv_type target, const float * src, int64_t n_rows, int64_t n_per_row, void * dst,
                   size_t dst_size, uint32_t n_threads);

}  // namespace rwkv
