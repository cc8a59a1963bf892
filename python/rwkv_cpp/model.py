"""The ``Model`` class: a loaded RWKV model and an evaluation context."""

import os
import shutil
import threading

import numpy as np

from ._lib import ffi, lib
from .errors import InvalidArgumentError, ModelIOError, error_for
from .legacy import convert_to_temp, is_legacy

_ERROR_BUF_SIZE = 1024
_UINT32_MAX = 2**32 - 1


def _string(ptr):
    return ffi.string(ptr).decode("utf-8", errors="replace")


def _check_f32_buffer(array, length, what):
    """Validates a caller buffer for zero-copy use: float32, C-contiguous,
    writable when it is an output, exactly ``length`` elements."""
    if not isinstance(array, np.ndarray):
        raise InvalidArgumentError(
            lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT,
            "%s must be a numpy array, got %s" % (what, type(array).__name__))
    if array.dtype != np.float32:
        raise InvalidArgumentError(
            lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT,
            "%s must have dtype float32, got %s" % (what, array.dtype))
    if not array.flags.c_contiguous:
        raise InvalidArgumentError(
            lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT, "%s must be C-contiguous" % what)
    if array.size != length:
        raise InvalidArgumentError(
            lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT,
            "%s has %d elements, the model needs %d" % (what, array.size, length))
    return array


def _as_tokens(tokens):
    """Tokens as a contiguous uint32 array (zero-copy when already one)."""
    if isinstance(tokens, np.ndarray) and tokens.dtype == np.uint32 and tokens.flags.c_contiguous:
        arr = tokens.reshape(-1)
    else:
        try:
            wide = np.asarray(tokens, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgumentError(
                lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT, "tokens must be integers: %s" % exc) from None
        if wide.size and (wide.min() < 0 or wide.max() > _UINT32_MAX):
            raise InvalidArgumentError(
                lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT,
                "token ids must be in [0, 2**32); got %d" % (wide.min() if wide.min() < 0 else wide.max()))
        arr = wide.astype(np.uint32)
    if arr.size == 0:
        raise InvalidArgumentError(lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT, "no tokens given")
    return arr


def _ptr(array, ctype="float *"):
    return ffi.cast(ctype, ffi.from_buffer(array))


# Model(packed_isa=...): the values of enum rwkv_packed_isa.
_PACKED_ISA = {"auto": lib.RWKV_PACKED_ISA_AUTO, "avx512": lib.RWKV_PACKED_ISA_AVX512_VNNI,
               "avx2": lib.RWKV_PACKED_ISA_AVX2, "none": lib.RWKV_PACKED_ISA_NONE}


class Model:
    """An RWKV model loaded from a GGUF file, with one evaluation context.

    The weights are memory-mapped.  On CPUs with AVX-512 VNNI or AVX2 the F16 and
    quantized matrices are re-laid out at load for the library's own kernels
    (``repack=True``, the default; ``repack=False`` keeps ggml's kernels and
    the file's pages).  ``packed_isa`` ("auto", "avx512", "avx2" or "none")
    caps those kernels; ``packed_kernels_name`` says which ones run.  The
    state is an explicit float32 array owned by the caller: ``eval`` never
    modifies the state it is given.

    >>> with Model("model.gguf") as model:
    ...     logits, state = model.eval_sequence([1, 2, 3])
    ...     logits, state = model.eval(4, state)
    """

    def __init__(self, path, n_threads=None, *, use_mmap=True, repack=True, packed_isa="auto", max_chunk_tokens=0):
        self._model = ffi.NULL
        self._ctx = ffi.NULL
        self._lock = threading.Lock()
        self._temp_dir = None
        if packed_isa not in _PACKED_ISA:
            raise ValueError("packed_isa must be one of %s, not %r" % (", ".join(_PACKED_ISA), packed_isa))
        self.path = os.fspath(path)
        load_path = self.path
        if is_legacy(self.path):
            # rwkv.cpp .bin: load a temporary GGUF conversion (removed on close)
            load_path, self._temp_dir = convert_to_temp(self.path)
        errbuf = ffi.new("char[]", _ERROR_BUF_SIZE)

        mparams = lib.rwkv_model_default_params()
        mparams.use_mmap = bool(use_mmap)
        mparams.repack = bool(repack)
        mparams.packed_isa = _PACKED_ISA[packed_isa]
        out_model = ffi.new("struct rwkv_model **")
        status = lib.rwkv_model_load(os.fsencode(load_path), mparams, out_model, errbuf, _ERROR_BUF_SIZE)
        if status != lib.RWKV_STATUS_OK:
            self.close()
            raise error_for(status, _string(errbuf))
        self._model = out_model[0]

        cparams = lib.rwkv_context_default_params()
        cparams.n_threads = _thread_count(n_threads)
        cparams.max_chunk_tokens = int(max_chunk_tokens)
        out_ctx = ffi.new("struct rwkv_context **")
        status = lib.rwkv_context_init(self._model, cparams, out_ctx, errbuf, _ERROR_BUF_SIZE)
        if status != lib.RWKV_STATUS_OK:
            self.close()
            raise error_for(status, _string(errbuf))
        self._ctx = out_ctx[0]

        self.n_vocab = int(lib.rwkv_model_n_vocab(self._model))
        self.n_embed = int(lib.rwkv_model_n_embed(self._model))
        self.n_layer = int(lib.rwkv_model_n_layer(self._model))
        self.version = _string(lib.rwkv_model_version(self._model))
        self.tokenizer_name = _string(lib.rwkv_model_tokenizer(self._model))
        self.type = _string(lib.rwkv_type_str(lib.rwkv_model_type(self._model)))
        # bytes of matrices laid out for the packed kernels (0: all with ggml)
        self.packed_bytes = int(lib.rwkv_model_packed_bytes(self._model))
        # the packed kernels this model runs: "AVX-512 VNNI", "AVX2" or "none"
        self.packed_kernels_name = _string(lib.rwkv_model_packed_kernels_name(self._model))
        self.state_len = int(lib.rwkv_model_state_len(self._model))
        self.n_threads = int(cparams.n_threads)

    @classmethod
    def default(cls, n_threads=None, **kwargs):
        """Opens the demo model bundled with the package: a small RWKV-4
        trained on Shakespeare (models/MODEL_CARD.md), 20B tokenizer."""
        from ._defaults import bundled_model_path
        path = bundled_model_path()
        if path is None:
            raise ModelIOError(lib.RWKV_STATUS_ERROR_IO, "the bundled demo model is missing from this installation")
        return cls(path, n_threads=n_threads, **kwargs)

    # -- lifetime -----------------------------------------------------------

    def close(self):
        """Frees the context and the model.  Safe to call more than once."""
        if self._ctx != ffi.NULL:
            lib.rwkv_context_free(self._ctx)
            self._ctx = ffi.NULL
        if self._model != ffi.NULL:
            lib.rwkv_model_free(self._model)
            self._model = ffi.NULL
        if getattr(self, "_temp_dir", None) is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    @property
    def closed(self):
        return self._ctx == ffi.NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self):
        if self.closed:
            return "<rwkv_cpp.Model (closed) %r>" % self.path
        return "<rwkv_cpp.Model RWKV-%s %s n_layer=%d n_embed=%d n_vocab=%d %r>" % (
            self.version, self.type, self.n_layer, self.n_embed, self.n_vocab, self.path)

    # -- evaluation ---------------------------------------------------------

    def init_state(self):
        """A new initial state (float32 array of ``state_len``)."""
        self._check_open()
        state = np.empty(self.state_len, dtype=np.float32)
        status = lib.rwkv_state_init(self._model, _ptr(state), state.size)
        if status != lib.RWKV_STATUS_OK:
            raise error_for(status, "rwkv_state_init failed")
        return state

    def eval(self, token, state=None, *, out_logits=None, out_state=None):
        """Evaluates one token.

        Returns ``(logits, new_state)``: float32 arrays of ``n_vocab`` and
        ``state_len``.  ``state=None`` means the initial state; the given
        state is not modified.  ``out_logits`` / ``out_state`` may be
        preallocated float32 arrays to write into.
        """
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
            raise InvalidArgumentError(
                lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT,
                "token must be an int, got %s" % type(token).__name__)
        return self.eval_sequence([int(token)], state, out_logits=out_logits, out_state=out_state)

    def eval_sequence(self, tokens, state=None, *, out_logits=None, out_state=None, logits=True,
                      all_logits=False):
        """Evaluates tokens in order (any length >= 1).

        Returns ``(logits, new_state)``.  The logits are those of the last
        token (``n_vocab``); with ``all_logits=True`` those of every token,
        shape ``(n_tokens, n_vocab)``; with ``logits=False`` the head is
        skipped and ``None`` is returned instead.
        """
        self._check_open()
        toks = _as_tokens(tokens)
        state_in = ffi.NULL
        if state is not None:
            state_in = _ptr(_check_f32_buffer(state, self.state_len, "state"))
        if out_state is None:
            out_state = np.empty(self.state_len, dtype=np.float32)
        _check_f32_buffer(out_state, self.state_len, "out_state")
        logits_ptr, n_logits = ffi.NULL, 0
        if logits or all_logits:
            shape = (toks.size, self.n_vocab) if all_logits else (self.n_vocab,)
            if out_logits is None:
                out_logits = np.empty(shape, dtype=np.float32)
            _check_f32_buffer(out_logits, int(np.prod(shape)), "out_logits")
            logits_ptr, n_logits = _ptr(out_logits), int(np.prod(shape))
        else:
            out_logits = None
        fn = lib.rwkv_eval_sequence_all_logits if all_logits else lib.rwkv_eval_sequence
        with self._lock:
            status = fn(self._ctx, _ptr(toks, "uint32_t *"), toks.size, state_in, _ptr(out_state),
                        self.state_len, logits_ptr, n_logits)
            if status != lib.RWKV_STATUS_OK:
                raise error_for(status, _string(lib.rwkv_context_last_error(self._ctx)))
        return out_logits, out_state

    def _check_open(self):
        if self.closed:
            raise InvalidArgumentError(lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT, "the model is closed")

    # -- generation and state files (rwkv_cpp.generate, rwkv_cpp.state_file) --

    def generate(self, prompt, max_tokens=200, sampling=None, state=None, tokenizer=None, *, logits=None,
                 stop_at_eos=True):
        """Generates text after ``prompt``; returns a ``Generation``, an
        iterator of text pieces as they become valid UTF-8.

        The prompt is prefilled with ``eval_sequence`` (from ``state``, or
        the initial state).  ``sampling``: a ``rwkv_cpp.sampling.SamplingParams``
        (default: the official PIPELINE_ARGS defaults).  ``tokenizer``: a
        name or ``Tokenizer`` overriding the model's.  Generation ends after
        ``max_tokens``, at a stop token (and the tokenizer's end of text
        unless ``stop_at_eos=False``) or a stop string.  The generation's
        ``state`` and ``logits`` continue it: ``generate("", state=g.state,
        logits=g.logits)``; an empty prompt needs both.
        """
        from .generate import generate

        self._check_open()
        return generate(self, prompt, max_tokens, sampling, state, tokenizer, logits=logits,
                        stop_at_eos=stop_at_eos)

    def save_state(self, path, state, logits=None):
        """Writes ``state`` (and optionally the ``logits`` that go with it)
        to a state file recording this model's shape and fingerprint."""
        from . import state_file

        state_file.save(path, self, state, logits)

    def load_state(self, path, *, with_logits=False, check_fingerprint=True):
        """The state saved in ``path`` (``(state, logits or None)`` with
        ``with_logits=True``).  A file saved from another model raises
        ``rwkv_cpp.state_file.StateFileError`` (a ValueError)."""
        from . import state_file

        state, logits = state_file.load(path, self, check_fingerprint)
        return (state, logits) if with_logits else state

    # -- sentence embeddings (rwkv_cpp.embedding) ----------------------------

    def embed(self, text_or_tokens, *, parts=None, stats=None, state=None, tokenizer=None):
        """The sentence embedding of a text (``str``/``bytes``, through the
        model's tokenizer) or of token ids: the selected ``parts`` of the
        state after reading it (default ``embedding.DEFAULT_PARTS``), z-scored
        per channel with ``stats`` (an ``EmbedStats`` or the path of a file
        from ``python -m rwkv_cpp.embed_stats``) when given.  ``state``
        continues from a state instead of the initial one.  float32 vector;
        see docs/EMBEDDING.md."""
        from . import embedding

        return embedding.embed(self, text_or_tokens, parts or embedding.DEFAULT_PARTS, stats,
                               state=state, tokenizer=tokenizer)

    def embed_many(self, texts, *, parts=None, stats=None, tokenizer=None, progress=None):
        """Embeddings of many texts or token sequences (each from the
        initial state): float32 array ``(len(texts), dim)``."""
        from . import embedding

        return embedding.embed_many(self, texts, parts or embedding.DEFAULT_PARTS, stats,
                                    tokenizer=tokenizer, progress=progress)


def packed_kernels_available():
    """Whether this CPU runs the library's own matrix kernels (AVX-512 VNNI
    or AVX2), the ones ``Model(repack=True)`` lays the weights out for."""
    return bool(lib.rwkv_packed_kernels_available())


def packed_kernels_name():
    """The instruction set of those kernels: "AVX-512 VNNI", "AVX2" or "none"."""
    return ffi.string(lib.rwkv_packed_kernels_name()).decode()


def _thread_count(n_threads):
    if n_threads is None:
        return 0  # the library uses every online CPU
    n = int(n_threads)
    if n < 1:
        raise InvalidArgumentError(lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT, "n_threads must be >= 1, got %d" % n)
    return n
