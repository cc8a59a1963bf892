"""The version of the rwkv_cpp package, kept at the bottom of the layers so
that every program, the converter's included, prints it for ``--version``
(``rwkv_cpp.__version__`` is this value)."""

__version__ = "0.1.0"


def version_line(prog: str) -> str:
    """What ``PROG --version`` prints."""
    return f"{prog} (rwkv_cpp {__version__})"
