"""Defaults of the command-line programs, in one place."""


def default_model_path():
    """The model the command-line programs use without ``--model``: None
    until a demo model is bundled with the package."""
    return None
