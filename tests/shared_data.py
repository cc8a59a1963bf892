"""Location of the shared data folder (../shared/data beside the checkout)
and a pytest skip for tests that need it."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REFERENCE = SHARED_DATA / "reference" / "rwkv_cpp_tiny"


def need(path):
    """Skips the calling test when ``path`` does not exist."""
    if not Path(path).exists():
        pytest.skip("shared data not available: %s (the ../shared/data folder beside the checkout)" % path)
    return Path(path)
