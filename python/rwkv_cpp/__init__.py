"""rwkv_cpp: a fast, faithful CPU runtime for RWKV language models.

    import rwkv_cpp
    with rwkv_cpp.Model("model.gguf") as model:
        logits, state = model.eval_sequence(tokens)
        with model.context(n_threads=1) as ctx:   # one per thread
            logits, state = ctx.eval_sequence(tokens)

``Model`` (the weights; shareable by threads) and ``Context`` (one
evaluation context; one thread at a time) mirror the C API's two objects.
"""

from .batching import Scheduler, generate_many
from .errors import (
    ComputeError,
    InvalidArgumentError,
    ModelFormatError,
    ModelIOError,
    ModelMemoryError,
    RWKVError,
    UnsupportedModelError,
)
from .convert.version import __version__
from .model import Context, Model, packed_kernels_available, packed_kernels_name

__all__ = [
    "Model",
    "Context",
    "packed_kernels_available",
    "packed_kernels_name",
    "generate_many",
    "Scheduler",
    "RWKVError",
    "InvalidArgumentError",
    "ModelIOError",
    "ModelFormatError",
    "UnsupportedModelError",
    "ModelMemoryError",
    "ComputeError",
    "__version__",
]
