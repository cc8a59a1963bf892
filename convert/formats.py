"""The first bytes by which the converter recognises (or refuses) an input
file: its format is read from the content, never from the file's name."""

from __future__ import annotations

#: a torch.save checkpoint is a zip archive (local file header, or the end
#: record of an empty archive).
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: torch's legacy (< 1.6, non-zip) format: pickle protocol 2 followed by
#: torch's magic number 0x1950a86a20f9469cfc6c.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
#: an rwkv.cpp .bin model: 'ggmf' read as a little-endian uint32.
LEGACY_MAGIC = 0x67676D66
