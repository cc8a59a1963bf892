"""RWKV-5.0/5.1/5.2, 6.0 and 7.0: our runtime against the official
implementation (PyPI rwkv 0.8.32, strategy ``cpu fp32``; RWKV-7 through
class RWKV_x070 in its own process) and against the float64 reference
(tests/reference_rwkv5plus.py), token by token, on random-weight checkpoints
(tests/wkv_zoo.py: per version head size 64, a smaller head size, and the
World vocabulary of 65536 tokens; three layers each).

N_PARITY_TOKENS tokens are fed one at a time from the initial state.

Tolerances:
- FP32 files vs official: logits max-abs 1e-4 at every step (the issue's
  bound); state: token-shift vectors max-abs, WKV matrices max
  |d| / max(1, |official|), 1e-4.  Both compute the same float32 maths in
  other summation orders (measured: up to 3.3e-5 logits).
- reference vs official: 5e-5: the official float32 rounding (logits up to
  ~11; measured up to 1.2e-5).
- FP16, Q8_0 and Q5_1 files, two checks each:
  1. every stored weight within its format's rounding of the FP32 weight
     (tests/format_rounding.py: exact, machine-independent bounds; this is
     what catches a matrix at the wrong precision or a damaged block);
  2. the relative RMS error of the logits over all steps against the
     official run, within REL_RMS_BOUND, derived below from the formats'
     rounding (measured: FP16 up to 1.4e-3, Q8_0 0.043, Q5_1 0.17, each
     2-3x below its bound); FP16 also max-abs 0.1 (1% of the logits' range;
     measured up to 4.3e-2) and the final state.
  Each bound is shown to catch a deliberate fault (the *_catches_* tests).
"""

import math

import numpy as np
import pytest

import file_faults
import reference_rwkv5plus as ref
from conftest import TEST_THREADS, import_rwkv_cpp, run_ours
from format_rounding import assert_within_rounding, stored_weights_errors
from gguf_reader import read_gguf
from wkv_zoo import SPECS, VERSIONS, first_failure, spec_names

FP32_TOL = 1e-4
REFERENCE_TOL = 5e-5
FP16_MAX_ABS = 0.1
FP16_STATE = {"x_prev": 1e-2, "wkv": 0.06}  # 64 steps x 2 fp16 roundings (2**-10), accumulated in the state

# Relative RMS rounding error of one value, by format:
#   fp16: 11 significant bits, round to nearest: uniform within +-2**-11
#         relative, RMS 2**-11 / sqrt(3);
#   Q8_0: blocks of 32, step d = max|x| / 127, uniform within +-d / 2: RMS
#         d / sqrt(12), i.e. (max / RMS of the block) / 127 / sqrt(12);
#   Q5_1: step (max - min) / 31 ~ 2 (max / RMS) / 31 for a symmetric block.
# max / RMS of a block of 32 Gaussian weights: 2.1.  Each matrix product
# also rounds its activations: to fp16 for FP16 matrices, to 8-bit blocks
# (Q8_0; Q8_1 for Q5_1) otherwise, where the worst blocks are the FFN's
# relu(k)**2: the largest of 32 normals (~2.04) squared over the RMS of
# relu(z)**2 (sqrt(3 / 2)): max / RMS 3.4.
GAUSSIAN_BLOCK_PEAK = 2.1
RELU2_BLOCK_PEAK = 3.4
FP16_REL_RMS = 2.0 ** -11 / math.sqrt(3)
Q8_ACTIVATION_REL_RMS = RELU2_BLOCK_PEAK / 127 / math.sqrt(12)
WEIGHT_REL_RMS = {"FP16": FP16_REL_RMS, "Q8_0": GAUSSIAN_BLOCK_PEAK / 127 / math.sqrt(12),
                  "Q5_1": 2 * GAUSSIAN_BLOCK_PEAK / 31 / math.sqrt(12)}
ACTIVATION_REL_RMS = {"FP16": FP16_REL_RMS, "Q8_0": Q8_ACTIVATION_REL_RMS, "Q5_1": Q8_ACTIVATION_REL_RMS}
# A product's output carries its weight and activation errors (independent:
# in quadrature).  The logits collect those of every full-width product of
# the model, 3 layers x at most 8 (r, k, v, g, output; FFN key, value,
# receptance) + the head = 25, each brought to the scale of the residual
# stream by the LayerNorms, independent: in quadrature again, growth
# sqrt(25).  (The LoRA products of v6/v7 feed tanh/sigmoid gates, which damp
# their errors.)
PRODUCT_GROWTH = math.sqrt(3 * 8 + 1)
# Margin 2 for ln_x: a GroupNorm per head rescales each head's output to unit
# variance, amplifying the relative error of a head whose output is small;
# at the first tokens (zero state) that output is a multiple of v,
# r . (u * k) v, which can be near zero.  (v5.0/5.1: single steps up to 10x
# the median step's error, the RMS over all steps up to 1.7x the median
# step's.)
LN_X_MARGIN = 2
GGML_TYPE_NAME = {"FP16": "F16", "Q8_0": "Q8_0", "Q5_1": "Q5_1"}
REL_RMS_BOUND = {kind: LN_X_MARGIN * PRODUCT_GROWTH * math.hypot(WEIGHT_REL_RMS[kind], ACTIVATION_REL_RMS[kind])
                 for kind in WEIGHT_REL_RMS}  # FP16 4.0e-3, Q8_0 0.091, Q5_1 0.40


def per_step_max_abs(actual, expected):
    return np.max(np.abs(actual.astype(np.float64) - expected), axis=1)


def relative_rms(actual, expected):
    expected = expected.astype(np.float64)
    return float(np.sqrt(((actual - expected) ** 2).mean()) / np.sqrt((expected ** 2).mean()))


def assert_rel_rms_within_bound(actual, expected, file_type):
    rel = relative_rms(actual, expected)
    bound = REL_RMS_BOUND[file_type]
    assert rel <= bound, f"{file_type}: relative RMS error {rel:.3g} (bound {bound:.3g})"


def assert_states_close(shape, actual_states, expected_states, tol):
    for step, (a, e) in enumerate(zip(actual_states, expected_states)):
        errors = ref.state_errors(shape, a, e)
        for kind, err in errors.items():
            limit = tol[kind] if isinstance(tol, dict) else tol
            assert err <= limit, f"state {kind}: error {err:.3g} at step {step} (bound {limit})"


@pytest.mark.parametrize("name", list(SPECS))
def test_fp32_matches_official(wkv_zoo, name):
    official = wkv_zoo.official(name)
    ours = run_ours(wkv_zoo.gguf(name), wkv_zoo.tokens(name))
    err = per_step_max_abs(ours.logits, official.logits)
    assert err.max() <= FP32_TOL, (
        f"logits max-abs {err.max():.3g} at step {int(err.argmax())}, first failing step "
        f"{first_failure(err, FP32_TOL)}")
    assert_states_close(wkv_zoo.shape(name), ours.states, official.states, FP32_TOL)


@pytest.mark.parametrize("name", spec_names("small"))
def test_bf16_checkpoint_matches_official(wkv_zoo, name):
    """bf16 checkpoints: v5/v6 round ln0(emb) to bf16 at load time, v7 does
    not (it widens every tensor to float32 first); the converter follows."""
    official = wkv_zoo.official(name, "bf16")
    ours = run_ours(wkv_zoo.gguf(name, "FP32", "bf16"), wkv_zoo.tokens(name))
    err = per_step_max_abs(ours.logits, official.logits)
    assert err.max() <= FP32_TOL, f"logits max-abs {err.max():.3g} at step {int(err.argmax())}"
    assert_states_close(wkv_zoo.shape(name), ours.states[-1:], official.states[-1:], FP32_TOL)


@pytest.mark.parametrize("name", list(SPECS))
def test_reference_matches_official(wkv_zoo, name):
    official = wkv_zoo.official(name)
    reference = wkv_zoo.reference(name)
    err = per_step_max_abs(reference.logits, official.logits)
    assert err.max() <= REFERENCE_TOL, f"logits max-abs {err.max():.3g} at step {int(err.argmax())}"
    assert_states_close(wkv_zoo.shape(name), reference.states[-1:], official.states[-1:], REFERENCE_TOL)


@pytest.mark.parametrize("name", spec_names("small"))
def test_fp32_matches_reference(wkv_zoo, name):
    """Also on the embedding rows that the bf16 parity test avoids: the
    reference rounds ln0(emb) exactly as the converter does."""
    spec = wkv_zoo.spec(name)
    tokens = wkv_zoo.tokens(name)
    ours = run_ours(wkv_zoo.gguf(name, "FP32", "bf16"), tokens)
    reference = wkv_zoo.reference(name, "bf16")
    err = per_step_max_abs(ours.logits, reference.logits)
    assert err.max() <= FP32_TOL, f"{spec.version}: logits max-abs {err.max():.3g}"


@pytest.mark.parametrize("name", list(SPECS))
def test_fp16_within_bounds(wkv_zoo, name):
    official = wkv_zoo.official(name)
    ours = run_ours(wkv_zoo.gguf(name, "FP16"), wkv_zoo.tokens(name))
    assert_rel_rms_within_bound(ours.logits, official.logits, "FP16")
    err = per_step_max_abs(ours.logits, official.logits)
    assert err.max() <= FP16_MAX_ABS, f"logits max-abs {err.max():.3g} at step {int(err.argmax())}"
    assert_states_close(wkv_zoo.shape(name), ours.states[-1:], official.states[-1:], FP16_STATE)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_1"])
@pytest.mark.parametrize("name", spec_names("h64") + spec_names("small"))
def test_quantized_within_bounds(wkv_zoo, name, qtype):
    official = wkv_zoo.official(name)
    ours = run_ours(wkv_zoo.quantized(name, qtype), wkv_zoo.tokens(name))
    assert_rel_rms_within_bound(ours.logits, official.logits, qtype)


def stored_file(wkv_zoo, name, file_type):
    return wkv_zoo.gguf(name, "FP16") if file_type == "FP16" else wkv_zoo.quantized(name, file_type)


def stored_weights_excess(wkv_zoo, name, path, file_type, tmp_path):
    """{tensor: excess over its format's rounding} of the file ``path`` (of
    ``file_type``) against the FP32 file of checkpoint ``name``."""
    from rwkv_cpp.quantize import quantize

    values = tmp_path / f"{path.stem}-values.gguf"
    quantize(path, values, "FP32", n_threads=1)  # ggml's own dequantization
    return stored_weights_errors(path, values, wkv_zoo.gguf(name), GGML_TYPE_NAME[file_type])


@pytest.mark.parametrize("file_type", ["FP16", "Q8_0", "Q5_1"])
@pytest.mark.parametrize("name", list(SPECS))
def test_stored_weights_within_format_rounding(wkv_zoo, tmp_path, name, file_type):
    excess = stored_weights_excess(wkv_zoo, name, stored_file(wkv_zoo, name, file_type), file_type, tmp_path)
    assert_within_rounding(excess, GGML_TYPE_NAME[file_type])


# ---------------------------------------------------------------------------
# Deliberate faults that the bounds above must catch
# ---------------------------------------------------------------------------

FAULT_SPEC = "v5.2-h64"


@pytest.mark.parametrize("file_type, fault", [
    ("FP16", file_faults.fp16_at_q8_0_precision),
    ("Q8_0", file_faults.swap_first_scales), ("Q8_0", file_faults.flip_lowest_code_bit),
    ("Q5_1", file_faults.swap_first_scales), ("Q5_1", file_faults.flip_lowest_code_bit)])
def test_weight_check_catches_a_damaged_matrix(wkv_zoo, tmp_path, file_type, fault):
    """One matrix at Q8_0 precision in an FP16 file, two blocks' scales
    swapped, a single weight one quantization step off: each moves its
    matrix's weights beyond the format's rounding, and only that matrix's."""
    tensor = "blocks.1.att.output.weight"
    damaged = file_faults.damaged_copy(stored_file(wkv_zoo, FAULT_SPEC, file_type), tmp_path / "damaged.gguf",
                                       [tensor], fault)
    excess = stored_weights_excess(wkv_zoo, FAULT_SPEC, damaged, file_type, tmp_path)
    assert excess.pop(tensor) > 0
    assert max(excess.values()) <= 0


def test_fp16_bound_catches_a_wrong_ln_x_epsilon(wkv_zoo, tmp_path):
    """An FP16 file recording ln_x eps 1e-5 (as the rwkv.cpp 5.x fixtures)
    instead of the official 64e-5: relative RMS 0.12, 30x the bound, on this
    checkpoint (from 8e-4 to 0.19 over the parity checkpoints: 12 of 15
    caught)."""
    from rwkv_cpp.convert import convert_file

    name = "v6.0-small"
    path = tmp_path / "eps.gguf"
    convert_file(str(wkv_zoo.pth(name)), str(path), out_type="FP16", ln_x_eps=1e-5)
    ours = run_ours(path, wkv_zoo.tokens(name))
    with pytest.raises(AssertionError):
        assert_rel_rms_within_bound(ours.logits, wkv_zoo.official(name).logits, "FP16")


def wrong_format_file(wkv_zoo, file_type, tmp_path):
    """A file of FAULT_SPEC whose matrices are not what ``file_type`` stores
    (relative RMS error of its logits measured over the parity checkpoints):
    FP16: the head left at Q8_0 precision: 5.3e-3 - 5.5e-3, 1.33 - 1.39x the bound;
    Q8_0: a Q5_0 file where Q8_0 was asked for: 0.11 - 0.18, 1.24 - 2x;
    Q5_1: every block's minimum zeroed (what a reader ignoring it sees): 1.2 - 1.3, 3x."""
    if file_type == "Q8_0":
        return stored_file(wkv_zoo, FAULT_SPEC, "Q5_0")
    path = stored_file(wkv_zoo, FAULT_SPEC, file_type)
    if file_type == "FP16":
        return file_faults.damaged_copy(path, tmp_path / "damaged.gguf", ["head.weight"],
                                        file_faults.fp16_at_q8_0_precision)
    matrices = [n for n, info in read_gguf(str(path)).tensors.items() if info.type.name == "Q5_1"]
    return file_faults.damaged_copy(path, tmp_path / "damaged.gguf", matrices, file_faults.drop_q5_1_minimum)


@pytest.mark.parametrize("file_type", ["FP16", "Q8_0", "Q5_1"])
def test_rel_rms_bound_catches_a_wrong_format(wkv_zoo, tmp_path, file_type):
    ours = run_ours(wrong_format_file(wkv_zoo, file_type, tmp_path), wkv_zoo.tokens(FAULT_SPEC))
    with pytest.raises(AssertionError):
        assert_rel_rms_within_bound(ours.logits, wkv_zoo.official(FAULT_SPEC).logits, file_type)


# ---------------------------------------------------------------------------
# Sequence mode, chunking, threads
# ---------------------------------------------------------------------------

SEQUENCE_TOL = 1e-5  # the same float32 maths; matrix products may sum in another order


def _eval_sequence(path, tokens, n_threads=TEST_THREADS, max_chunk_tokens=0, state=None):
    rwkv_cpp = import_rwkv_cpp()
    with rwkv_cpp.Model(str(path), n_threads=n_threads, max_chunk_tokens=max_chunk_tokens) as model:
        logits, state = model.eval_sequence(tokens, state, all_logits=True)
        return np.array(logits, copy=True), np.array(state, copy=True)


@pytest.mark.parametrize("chunk", [0, 5])
@pytest.mark.parametrize("name", spec_names("small") + ["v7.0-h64"])
def test_sequence_equals_token_by_token(wkv_zoo, name, chunk):
    tokens = wkv_zoo.tokens(name)
    one_by_one = run_ours(wkv_zoo.gguf(name), tokens)
    logits, state = _eval_sequence(wkv_zoo.gguf(name), tokens, max_chunk_tokens=chunk)
    err = per_step_max_abs(logits, one_by_one.logits)
    assert err.max() <= SEQUENCE_TOL, f"logits max-abs {err.max():.3g} at step {int(err.argmax())}"
    assert_states_close(wkv_zoo.shape(name), [state], one_by_one.states[-1:], SEQUENCE_TOL)


@pytest.mark.parametrize("version", VERSIONS)
def test_split_prefill_carries_the_state(wkv_zoo, version):
    name = f"v{version}-small"
    tokens = wkv_zoo.tokens(name)
    whole_logits, whole_state = _eval_sequence(wkv_zoo.gguf(name), tokens)
    first_logits, state = _eval_sequence(wkv_zoo.gguf(name), tokens[:23])
    rest_logits, state = _eval_sequence(wkv_zoo.gguf(name), tokens[23:], state=state)
    both = np.concatenate([first_logits, rest_logits])
    assert np.abs(both - whole_logits).max() <= SEQUENCE_TOL
    assert_states_close(wkv_zoo.shape(name), [state], [whole_state], SEQUENCE_TOL)


@pytest.mark.parametrize("name", ["v5.2-h64", "v6.0-h64", "v7.0-h64"])
def test_more_threads_than_heads(wkv_zoo, name):
    """Two heads on three threads: the heads are split between threads, and
    a thread without a head must leave the result alone."""
    tokens = wkv_zoo.tokens(name)[:16]
    one = _eval_sequence(wkv_zoo.gguf(name), tokens, n_threads=1)
    three = _eval_sequence(wkv_zoo.gguf(name), tokens, n_threads=3)
    assert np.abs(one[0] - three[0]).max() <= 1e-6
    assert np.abs(one[1] - three[1]).max() <= 1e-6 * max(1.0, np.abs(one[1]).max())


@pytest.mark.parametrize("version", VERSIONS)
def test_initial_state_is_zero(wkv_zoo, version):
    rwkv_cpp = import_rwkv_cpp()
    name = f"v{version}-small"
    with rwkv_cpp.Model(str(wkv_zoo.gguf(name)), n_threads=1) as model:
        shape = wkv_zoo.shape(name)
        assert model.state_len == shape.state_len
        assert not np.any(model.init_state())
        assert model.version == version


# ---------------------------------------------------------------------------
# The reference's WKV steps
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [1, 2, 9])
def test_reference_wkv5_matches_closed_form(n_tokens):
    """ref.wkv5_head, stepped, against the unrolled sum
    y_t = r_t^T (u k_t v_t^T + sum_{s<t} diag(w)^(t-1-s) k_s v_s^T)."""
    rng = np.random.default_rng(n_tokens)
    N = 6
    r, k, v = (rng.normal(size=(n_tokens, N)) for _ in range(3))
    w, u = rng.uniform(0.5, 1.0, N), rng.normal(size=N)
    S = np.zeros((N, N))
    for t in range(n_tokens):
        y, S = ref.wkv5_head(r[t], k[t], v[t], w, u, S)
        direct = u[:, None] * np.outer(k[t], v[t])
        for s in range(t):
            direct = direct + (w ** (t - 1 - s))[:, None] * np.outer(k[s], v[s])
        np.testing.assert_allclose(y, r[t] @ direct, rtol=1e-12, atol=1e-12)


def test_reference_wkv7_matches_matrix_form():
    """ref.wkv7_head against S' = S (diag(w) - kk^T (a kk)) + v k^T written
    as one transition matrix."""
    rng = np.random.default_rng(7)
    N = 5
    S = rng.normal(size=(N, N))
    r, k, v = (rng.normal(size=N) for _ in range(3))
    kk = rng.normal(size=N)
    kk /= np.linalg.norm(kk)
    w, a = rng.uniform(0.5, 1.0, N), rng.uniform(0.0, 1.0, N)
    y, S_new = ref.wkv7_head(r, w, k, v, kk, a, S)
    expected = S @ (np.diag(w) - np.outer(kk, kk * a)) + np.outer(v, k)
    np.testing.assert_allclose(S_new, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, expected @ r, rtol=1e-12, atol=1e-12)
