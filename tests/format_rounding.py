"""How far each stored weight may be from the FP32 weight it was made from,
by the storage format alone (no model, no amplification): exact bounds that
a file can be checked against weight by weight.

A fault in a quantizer or a converter (one matrix at the wrong precision, a
flipped bit, two blocks' scales swapped) moves some weights by whole
quantization steps, far beyond these bounds, while the logits of a random
model hardly notice it: the weight check is what catches it.
"""

import numpy as np

from gguf_reader import read_gguf

FP16_REL = 2.0 ** -11  # fp16 keeps 11 significant bits: round to nearest is within 2**-11 relative
FP16_MIN_SPACING = 2.0 ** -24  # spacing of fp16 subnormals
QUANT_BLOCK = 32  # weights per block in Q8_0 / Q5_0 / Q5_1


def weight_rounding_bound(fp32_blocks, kind):
    """Largest |stored - fp32| allowed for each weight of ``fp32_blocks``
    (rows of QUANT_BLOCK weights; any shape for F16), by format:

    F16:  round to nearest: half a spacing, 2**-11 relative (2**-25 among
          subnormals).
    Q8_0: d = max|w| / 127 stored as fp16: q = round(w / d) is within d / 2,
          and the fp16 rounding of d moves q * d by up to 127 * 2**-11 * d.
    Q5_1: d = (max - min) / 31 and min, both fp16: within d / 2, plus 32
          fp16 ulps of d (codes < 32) and one of min.
    Q5_0: d = (the weight of largest magnitude) / -16, the top code clipped:
          within d, plus 32 fp16 ulps of d.
    """
    w = np.abs(fp32_blocks)
    if kind == "F16":
        return np.maximum(FP16_REL * w, FP16_MIN_SPACING / 2)
    lo = fp32_blocks.min(axis=1, keepdims=True)
    hi = fp32_blocks.max(axis=1, keepdims=True)
    if kind == "Q8_0":
        step = w.max(axis=1, keepdims=True) / 127
        return step / 2 + 127 * FP16_REL * step
    if kind == "Q5_1":
        step = (hi - lo) / 31
        return step / 2 + 32 * FP16_REL * step + FP16_REL * np.abs(lo)
    if kind == "Q5_0":
        step = np.maximum(np.abs(lo), np.abs(hi)) / 16
        return step + 32 * FP16_REL * step
    raise ValueError(kind)


def stored_weights_errors(stored_gguf, dequantized_gguf, fp32_gguf, kind):
    """{tensor: largest excess over weight_rounding_bound} for every tensor
    that ``stored_gguf`` holds as ``kind`` ('F16', 'Q8_0', 'Q5_0', 'Q5_1'):
    its values, read from ``dequantized_gguf`` (the same file written as
    FP32), against the same tensor of ``fp32_gguf``.  <= 0 means within."""
    stored = read_gguf(str(stored_gguf))
    values, exact = read_gguf(str(dequantized_gguf)), read_gguf(str(fp32_gguf))
    excess = {}
    for name, info in stored.tensors.items():
        if info.type.name != kind:
            continue
        rows = (1, -1) if kind == "F16" else (-1, QUANT_BLOCK)
        blocks = np.asarray(exact.tensor(name), np.float64).reshape(rows)
        err = np.abs(np.asarray(values.tensor(name), np.float64).reshape(rows) - blocks)
        excess[name] = float((err - weight_rounding_bound(blocks, kind)).max())
    return excess


def assert_within_rounding(excess, kind):
    """``excess`` as stored_weights_errors returns it: not empty, none > 0."""
    assert excess, f"no {kind} tensor in the file"
    beyond = {name: e for name, e in excess.items() if e > 0}
    assert not beyond, f"weights beyond their {kind} rounding (by up to): {beyond}"


def assert_stored_weights_within_rounding(stored_gguf, dequantized_gguf, fp32_gguf, kind):
    assert_within_rounding(stored_weights_errors(stored_gguf, dequantized_gguf, fp32_gguf, kind), kind)
