// Quantization of a model file: reads a GGUF model, writes a new one whose
// matrices are stored in another type, streaming tensor by tensor.
#pragma once

#include "rwkv_common.h"

#include <string>

namespace rwkv {

void quantize_file(const std::string & in, const std::string & out, rwkv_type target,
                   const rwkv_quantize_params & params);

}  // namespace rwkv
