"""Where the bundled demo model is (``Model.default()`` and the programs' default)."""

import os

#: the demo model bundled with the package (see models/MODEL_CARD.md)
BUNDLED_MODEL = "rwkv4-shakespeare-L8-D192-Q5_1.gguf"


def bundled_model_path():
    """Path of the bundled demo model, or None if the package lacks it."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", BUNDLED_MODEL)
    return path if os.path.exists(path) else None


def default_model_path():
    """The model the command-line programs use without ``--model``: the
    bundled demo model."""
    return bundled_model_path()
