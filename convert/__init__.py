"""rwkv_cpp.convert: torch-free converter of RWKV checkpoints to GGUF.

Reads official PyTorch ``.pth`` files (safely: the pickle's code never runs)
and ``.safetensors`` files of RWKV-4, 5.0/5.1/5.2, 6.0 and 7.0, with official
BlinkDL (or, for RWKV-4, Hugging Face) tensor names, and writes the GGUF file
the rwkv_cpp runtime loads (docs/FORMAT.md), in any type the library runs
(quantized types through the library's own quantizer, storage.py), with an
optional LoRA adapter merged in and a tuned initial state kept.  Depends on
numpy, the standard library and, for the quantized types, the package's
native library (the command line adds tqdm for its progress bar).

Command line: ``python -m rwkv_cpp.convert IN OUT [--type TYPE] [--lora ADAPTER]``.
"""

from .checkpoint import open_checkpoint, sniff_format
from .convert import ConvertOptions, convert_checkpoint, convert_file, convert_state_dict
from .errors import ConvertError, UnsafePickleError, UnsupportedVersionError
from .gguf_writer import GGUFWriter
from .keys import normalize_name, normalize_names
from .model import (RWKV4Params, WkvParams, check_rwkv4_tensors, check_wkv_tensors,
                    detect_version, infer_rwkv4_params, infer_wkv_params,
                    rwkv4_expected_shapes)
from .output import ConvertSummary
from .pth import open_pth
from .random_weights import (make_rwkv4_state_dict, make_rwkv5_state_dict, make_rwkv6_state_dict,
                             make_rwkv7_state_dict, make_state_dict, save_safetensors)
from .safetensors import open_safetensors, write_safetensors
from .tensors import (Checkpoint, SourceTensor, bf16_bits_to_f32,
                      f32_to_bf16_bits, round_to_bf16)
from .transforms import (FORMAT_VERSION, LAYER_NORM_EPSILON, LN_X_EPSILON, decay_transform,
                         emb_with_ln0, layer_norm_f64)


__all__ = [
    "Checkpoint", "ConvertError", "ConvertOptions", "ConvertSummary", "FORMAT_VERSION",
    "GGUFWriter", "LAYER_NORM_EPSILON", "LN_X_EPSILON", "RWKV4Params",
    "SourceTensor", "UnsafePickleError", "UnsupportedVersionError",
    "WkvParams", "bf16_bits_to_f32", "check_rwkv4_tensors", "check_wkv_tensors",
    "convert_checkpoint",
    "convert_file", "convert_state_dict", "decay_transform", "detect_version",
    "emb_with_ln0", "f32_to_bf16_bits", "infer_rwkv4_params", "infer_wkv_params",
    "layer_norm_f64", "make_rwkv4_state_dict", "make_rwkv5_state_dict",
    "make_rwkv6_state_dict", "make_rwkv7_state_dict", "make_state_dict", "normalize_name", "normalize_names",
    "open_checkpoint", "open_pth", "open_safetensors",
    "round_to_bf16", "rwkv4_expected_shapes", "save_safetensors", "sniff_format",
    "write_safetensors",
]
