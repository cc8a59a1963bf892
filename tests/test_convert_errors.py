"""Damaged inputs give a ConvertError naming the file and the member or
tensor at fault, never a raw exception: one hand-made file for each of the
exception classes the converter used to leak (UnicodeDecodeError, numpy's
"operands could not be broadcast" ValueError, NotImplementedError of an
unsupported zip compression method) and for their neighbours.  Torch-free:
the files are written by tests/fuzz/seeds.py."""

import struct

import numpy as np
import pytest

from rwkv_cpp.convert import ConvertError, convert_file

from fuzz import seeds


def _v4():
    return dict(next(sd for label, sd in seeds.seed_state_dicts() if label == "v4"))


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _convert_error(path, tmp_path, *fragments):
    """convert_file raises a ConvertError whose message holds the file name
    and each fragment; returns it."""
    with pytest.raises(ConvertError) as info:
        convert_file(path, tmp_path / "out.gguf")
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "out.gguf").exists()
    return info.value


def _valid_pth(**kwargs):
    pkl, storages = seeds.pth_members(_v4())
    return seeds.zip_pth(pkl, storages, **kwargs)


def test_undecodable_member_name_is_a_convert_error(tmp_path):
    # a member name flagged UTF-8 (general purpose bit 11) that is not UTF-8:
    # zipfile raised UnicodeDecodeError while reading the central directory
    pkl, storages = seeds.pth_members(_v4())
    storages["x\u00e9"] = b""
    data = seeds.zip_pth(pkl, storages).replace("x\u00e9".encode(), b"x\xff\xfe")
    path = _write(tmp_path, "bad_name.pth", data)
    exc = _convert_error(path, tmp_path, "not a valid zip archive", "UnicodeDecodeError")
    assert isinstance(exc.__cause__, UnicodeDecodeError)


def _set_compression(data: bytes, member: str, method: int) -> bytes:
    """The archive with ``member``'s compression method (in its local and
    central headers) set to ``method``."""
    out = bytearray(data)
    name = member.encode()
    for signature, method_at, name_at in ((b"PK\x03\x04", 8, 30), (b"PK\x01\x02", 10, 46)):
        start = 0
        while (start := out.find(signature, start)) >= 0:
            if out[start + name_at: start + name_at + len(name)] == name:
                struct.pack_into("<H", out, start + method_at, method)
            start += 4
    return bytes(out)


def test_unsupported_compression_method_is_a_convert_error(tmp_path):
    # method 99 (AES): zipfile raises NotImplementedError when the member is read
    data = _set_compression(_valid_pth(), "archive/data/3", 99)
    path = _write(tmp_path, "method99.pth", data)
    exc = _convert_error(path, tmp_path, "archive/data/3", "NotImplementedError")
    assert isinstance(exc.__cause__, NotImplementedError)


def test_corrupt_deflate_stream_is_a_convert_error(tmp_path):
    # a deflated member whose stream is garbage: zlib.error
    pkl, storages = seeds.pth_members(_v4())
    data = bytearray(seeds.zip_pth(pkl, storages, deflate=True))
    start = data.find(b"archive/data/0") + len("archive/data/0")
    data[start:start + 8] = b"\xff" * 8
    path = _write(tmp_path, "deflate.pth", bytes(data))
    _convert_error(path, tmp_path, "archive/data/0")


def test_zip_version_too_new_is_a_convert_error(tmp_path):
    # "version needed to extract" 9.9: NotImplementedError while opening
    data = bytearray(_valid_pth())
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 6, 99)
    path = _write(tmp_path, "version.pth", bytes(data))
    _convert_error(path, tmp_path, "not a valid zip archive", "NotImplementedError")


def test_huge_memo_index_is_refused_before_allocating(tmp_path):
    # LONG_BINPUT 2**31 - 1 made the C unpickler allocate a memo of 2**31 entries
    pkl, storages = seeds.pth_members(_v4())
    pkl = pkl[:-1] + b"r\xff\xff\xff\x7f" + b"."
    path = _write(tmp_path, "memo.pth", seeds.zip_pth(pkl, storages))
    _convert_error(path, tmp_path, "data.pkl", "memo index 2147483647")


def _v52_bin(time_decay_shape):
    sd = dict(next(sd for label, sd in seeds.seed_state_dicts() if label == "v52"))
    sd["blocks.0.att.time_decay"] = np.zeros(time_decay_shape, dtype=np.float32)
    return seeds.legacy_bin(sd, 1)


def test_per_head_vector_of_wrong_size_is_a_convert_error(tmp_path):
    # an rwkv.cpp .bin whose (H, N) decay holds 2 x 3 values: numpy raised
    # "operands could not be broadcast together" while writing the output
    path = _write(tmp_path, "decay.bin", _v52_bin((2, 3)))
    _convert_error(path, tmp_path, "blocks.0.att.time_decay", "(2, 3)")


def test_every_seed_still_converts(tmp_path):
    # the damaged files above differ from these by the damage only
    for name, data in list(seeds.pth_seeds())[:3] + [("v52.bin", _v52_bin((2, 4)))]:
        path = _write(tmp_path, name, data)
        convert_file(path, tmp_path / (name + ".gguf"))
