"""rwkv_cpp: a fast, faithful CPU runtime for RWKV language models.

    import rwkv_cpp
    with rwkv_cpp.Model("model.gguf") as model:
        logits, state = model.eval_sequence(tokens)
"""

from .errors import (
    ComputeError,
    InvalidArgumentError,
    ModelFormatError,
    ModelIOError,
    ModelMemoryError,
    RWKVError,
    UnsupportedModelError,
)
from .model import Model, packed_kernels_available, packed_kernels_name

__version__ = "0.1.0"

__all__ = [
    "Model",
    "packed_kernels_available",
    "packed_kernels_name",
    "RWKVError",
    "InvalidArgumentError",
    "ModelIOError",
    "ModelFormatError",
    "UnsupportedModelError",
    "ModelMemoryError",
    "ComputeError",
    "__version__",
]
