"""Deliberate faults written into a copy of a GGUF model file, tensor by
tensor: each test bound must be shown to catch some of them."""

import shutil

import numpy as np

from rwkv_cpp.convert.gguf_constants import GGML_BLOCK, GGMLType

from gguf_reader import read_gguf

FP16_BYTES = 2  # the scale d (and Q5_1's min m after it) opens every block


def damaged_copy(src, dst, tensor_names, damage):
    """Copies ``src`` to ``dst`` and replaces the data of each named tensor
    by ``damage(raw_bytes, ggml_type)`` (same length)."""
    shutil.copyfile(src, dst)
    g = read_gguf(str(src))
    with open(dst, "r+b") as f:
        for name in tensor_names:
            info = g.tensors[name]
            f.seek(g.data_offset + info.offset)
            raw = bytearray(f.read(info.nbytes))
            new = bytes(damage(raw, info.type))
            assert len(new) == len(raw)
            f.seek(g.data_offset + info.offset)
            f.write(new)
    return dst


def _blocks(raw, ggml_type):
    return np.frombuffer(raw, np.uint8).reshape(-1, GGML_BLOCK[ggml_type][1]).copy()


def swap_first_scales(raw, ggml_type):
    """The scales d of the tensor's first two blocks exchanged."""
    b = _blocks(raw, ggml_type)
    b[[0, 1], :FP16_BYTES] = b[[1, 0], :FP16_BYTES]
    return b.tobytes()


def flip_lowest_code_bit(raw, ggml_type):
    """One weight of the first block one quantization step off: the lowest
    bit of its code flipped (Q8_0: the int8 after d; Q5_1: the low nibble
    after d, m and the 4 bytes of high bits)."""
    code_offset = {GGMLType.Q8_0: FP16_BYTES, GGMLType.Q5_1: 2 * FP16_BYTES + 4}[ggml_type]
    b = _blocks(raw, ggml_type)
    b[0, code_offset] ^= 1
    return b.tobytes()


def drop_q5_1_minimum(raw, ggml_type):
    """Every Q5_1 block read as if its minimum m were 0 (a reader that
    ignores the offset of the format)."""
    assert ggml_type == GGMLType.Q5_1
    b = _blocks(raw, ggml_type)
    b[:, FP16_BYTES:2 * FP16_BYTES] = 0
    return b.tobytes()


def fp16_at_q8_0_precision(raw, ggml_type):
    """An F16 matrix rounded as Q8_0 would round it (blocks of 32, step
    max|w| / 127), stored back as F16: a matrix left at the wrong precision."""
    assert ggml_type == GGMLType.F16
    w = np.frombuffer(raw, "<f2").astype(np.float64).reshape(-1, 32)
    step = (np.abs(w).max(axis=1, keepdims=True) / 127).astype(np.float16).astype(np.float64)
    q = np.round(w / np.where(step == 0, 1, step))
    return (q * step).astype("<f2").tobytes()
