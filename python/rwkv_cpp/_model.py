"""The two C objects of ``rwkv.h``, one Python class each.

- ``Model`` owns a ``struct rwkv_model``: the weights, memory-mapped (or
  re-laid out for the packed kernels), immutable once loaded.  Any number of
  threads may use one ``Model`` and make contexts from it.
- ``Context`` owns a ``struct rwkv_context``: compute graphs, buffers and a
  thread pool.  A context is used by one thread at a time (a second thread
  calling it while it evaluates gets a ``RuntimeError``); give each Python
  thread its own, from ``model.context(n_threads=...)``.

The evaluation calls release the GIL (cffi does so around every C call), so
contexts of one model evaluate in parallel on several Python threads.

For the simple path, a ``Model`` also holds one default context of
``n_threads`` threads, behind a lock: ``Model.eval`` and
``Model.eval_sequence`` are safe from any thread, one call at a time.

This module is the bottom of the Python package: it imports only the cffi
binding, the exceptions and the legacy-file loader.  Generation, embeddings
and state files are built on top of it (``rwkv_cpp.model`` adds them to
``Model`` as methods).
"""

import contextlib
import os
import shutil
import threading
import weakref

import numpy as np

from ._defaults import bundled_model_path
from ._lib import ffi, lib
from .errors import InvalidArgumentError, ModelIOError, error_for
from .legacy import convert_to_temp, is_legacy

_ERROR_BUF_SIZE = 1024
_UINT32_MAX = 2**32 - 1


def _string(ptr):
    return ffi.string(ptr).decode("utf-8", errors="replace")


def _invalid(message):
    return InvalidArgumentError(lib.RWKV_STATUS_ERROR_INVALID_ARGUMENT, message)


def _check_f32_buffer(array, length, what):
    """Validates a caller buffer for zero-copy use: float32, C-contiguous,
    writable when it is an output, exactly ``length`` elements."""
    if not isinstance(array, np.ndarray):
        raise _invalid("%s must be a numpy array, got %s" % (what, type(array).__name__))
    if array.dtype != np.float32:
        raise _invalid("%s must have dtype float32, got %s" % (what, array.dtype))
    if not array.flags.c_contiguous:
        raise _invalid("%s must be C-contiguous" % what)
    if array.size != length:
        raise _invalid("%s has %d elements, the model needs %d" % (what, array.size, length))
    return array


def _as_tokens(tokens):
    """Tokens as a contiguous uint32 array (zero-copy when already one)."""
    if isinstance(tokens, np.ndarray) and tokens.dtype == np.uint32 and tokens.flags.c_contiguous:
        arr = tokens.reshape(-1)
    else:
        try:
            wide = np.asarray(tokens, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _invalid("tokens must be integers: %s" % exc) from None
        if wide.size and (wide.min() < 0 or wide.max() > _UINT32_MAX):
            raise _invalid("token ids must be in [0, 2**32); got %d" % (wide.min() if wide.min() < 0 else wide.max()))
        arr = wide.astype(np.uint32)
    if arr.size == 0:
        raise _invalid("no tokens given")
    return arr


def _ptr(array, ctype="float *"):
    return ffi.cast(ctype, ffi.from_buffer(array))


def _thread_count(n_threads):
    if n_threads is None:
        return 0  # the library uses every online CPU
    n = int(n_threads)
    if n < 1:
        raise _invalid("n_threads must be >= 1, got %d" % n)
    return n


def _check_token(token):
    if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
        raise _invalid("token must be an int, got %s" % type(token).__name__)
    return int(token)


def _new_context(model_ptr, n_threads, max_chunk_tokens):
    """``(struct rwkv_context *, n_threads as given to C)``; raises on failure."""
    params = lib.rwkv_context_default_params()
    params.n_threads = _thread_count(n_threads)
    params.max_chunk_tokens = int(max_chunk_tokens)
    out = ffi.new("struct rwkv_context **")
    errbuf = ffi.new("char[]", _ERROR_BUF_SIZE)
    status = lib.rwkv_context_init(model_ptr, params, out, errbuf, _ERROR_BUF_SIZE)
    if status != lib.RWKV_STATUS_OK:
        raise error_for(status, _string(errbuf))
    return out[0], int(params.n_threads)


def _eval_sequence(ctx, model, tokens, state, out_logits, out_state, logits, all_logits):
    """One evaluation on the C context ``ctx`` of ``model``, after checking
    every buffer; the caller makes sure no other thread uses ``ctx``."""
    toks = _as_tokens(tokens)
    state_in = ffi.NULL
    if state is not None:
        state_in = _ptr(_check_f32_buffer(state, model.state_len, "state"))
    if out_state is None:
        out_state = np.empty(model.state_len, dtype=np.float32)
    _check_f32_buffer(out_state, model.state_len, "out_state")
    logits_ptr, n_logits = ffi.NULL, 0
    if logits or all_logits:
        shape = (toks.size, model.n_vocab) if all_logits else (model.n_vocab,)
        if out_logits is None:
            out_logits = np.empty(shape, dtype=np.float32)
        _check_f32_buffer(out_logits, int(np.prod(shape)), "out_logits")
        logits_ptr, n_logits = _ptr(out_logits), int(np.prod(shape))
    else:
        out_logits = None
    fn = lib.rwkv_eval_sequence_all_logits if all_logits else lib.rwkv_eval_sequence
    # cffi releases the GIL for the call: other contexts run meanwhile
    status = fn(ctx, _ptr(toks, "uint32_t *"), toks.size, state_in, _ptr(out_state), model.state_len,
                logits_ptr, n_logits)
    if status != lib.RWKV_STATUS_OK:
        raise error_for(status, _string(lib.rwkv_context_last_error(ctx)))
    return out_logits, out_state


def _batch_states(states, n_seq, state_len):
    """``states`` of ``eval_batch`` as a list of ``n_seq`` items, each a
    float32 array of ``state_len`` or None (the initial state)."""
    if states is None:
        return [None] * n_seq
    if isinstance(states, np.ndarray) and states.ndim == 2:
        if states.shape != (n_seq, state_len):
            raise _invalid("states has shape %s, the batch needs (%d, %d)" % (states.shape, n_seq, state_len))
        return [_check_f32_buffer(np.ascontiguousarray(row), state_len, "states[%d]" % i)
                for i, row in enumerate(states)]
    states = list(states)
    if len(states) != n_seq:
        raise _invalid("states has %d items for %d sequences" % (len(states), n_seq))
    return [None if s is None else _check_f32_buffer(s, state_len, "states[%d]" % i) for i, s in enumerate(states)]


def _eval_batch(ctx, model, sequences, states):
    """One ``rwkv_eval_batch`` call on the C context ``ctx`` of ``model``:
    every sequence's last-token logits and new state, bit for bit those of
    evaluating it alone.  C checks every sequence before computing, so a bad
    item leaves nothing half done."""
    sequences = [_as_tokens(seq) for seq in sequences]
    if not sequences:
        raise _invalid("no sequences given")
    n_seq = len(sequences)
    states = _batch_states(states, n_seq, model.state_len)
    logits = np.empty((n_seq, model.n_vocab), dtype=np.float32)
    out_states = np.empty((n_seq, model.state_len), dtype=np.float32)
    seqs = ffi.new("struct rwkv_batch_seq[]", n_seq)
    for i, (toks, state) in enumerate(zip(sequences, states)):
        seqs[i].tokens = _ptr(toks, "uint32_t *")
        seqs[i].n_tokens = toks.size
        seqs[i].state_in = ffi.NULL if state is None else _ptr(state)
        seqs[i].state_out = _ptr(out_states[i])
        seqs[i].logits_out = _ptr(logits[i])
        seqs[i].n_logits = model.n_vocab
    # cffi releases the GIL for the call; ``sequences`` and ``states`` keep
    # the buffers that ``seqs`` points into alive until it returns
    status = lib.rwkv_eval_batch(ctx, seqs, n_seq, model.state_len, False)
    if status != lib.RWKV_STATUS_OK:
        raise error_for(status, _string(lib.rwkv_context_last_error(ctx)))
    return logits, out_states


# Model(packed_isa=...): the values of enum rwkv_packed_isa.
_PACKED_ISA = {"auto": lib.RWKV_PACKED_ISA_AUTO, "avx512": lib.RWKV_PACKED_ISA_AVX512_VNNI,
               "avx2": lib.RWKV_PACKED_ISA_AVX2, "none": lib.RWKV_PACKED_ISA_NONE}


class Model:
    """An RWKV model loaded from a GGUF file (or an rwkv.cpp ``.bin``).

    The weights are memory-mapped.  On CPUs with AVX-512 VNNI or AVX2 the F16
    and quantized matrices are re-laid out at load for the library's own
    kernels (``repack=True``, the default; ``repack=False`` keeps ggml's
    kernels and the file's pages).  ``packed_isa`` ("auto", "avx512",
    "avx2" or "none") caps those kernels; ``packed_kernels_name`` says which
    ones the model uses.  ``packed_cache`` (a path) keeps the re-laid-out
    matrices in a file: the first load writes it, later loads of the same
    model file map it instead of re-laying out (faster: no fresh memory to
    fill); a different model file or library layout rewrites it.  The
    state is an explicit float32 array owned by the caller: evaluation
    never modifies the state it is given.

    Thread safety: a ``Model`` may be shared by any number of threads.
    ``context(n_threads)`` makes an independent ``Context`` (one per
    thread); ``eval`` / ``eval_sequence`` here use a default context of
    ``n_threads`` threads (``None``: every online CPU) behind a lock, so
    they are safe from several threads but run one at a time.

    ``close()`` closes every context made from the model, then frees it.

    >>> with Model("model.gguf") as model:
    ...     logits, state = model.eval_sequence([1, 2, 3])
    ...     logits, state = model.eval(4, state)
    """

    def __init__(self, path, n_threads=None, *, use_mmap=True, repack=True, packed_isa="auto",
                 max_chunk_tokens=0, packed_cache=None):
        self._model = ffi.NULL
        self._default_ctx = ffi.NULL
        self._lock = threading.Lock()           # the default context, one call at a time
        self._contexts_lock = threading.Lock()  # the set of open contexts and the closing flag
        self._contexts = weakref.WeakSet()
        self._n_open = 0                        # open Contexts (a WeakSet forgets those in a dead cycle)
        self._closing = False
        self._temp_dir = None
        if packed_isa not in _PACKED_ISA:
            raise ValueError("packed_isa must be one of %s, not %r" % (", ".join(_PACKED_ISA), packed_isa))
        self.path = os.fspath(path)
        try:
            self._load(use_mmap, repack, packed_isa, packed_cache)
            self._default_ctx, self.n_threads = _new_context(self._model, n_threads, max_chunk_tokens)
        except BaseException:
            self.close()
            raise
        self._read_shape()

    def _load(self, use_mmap, repack, packed_isa, packed_cache):
        load_path = self.path
        if is_legacy(self.path):
            if packed_cache is not None:
                raise ValueError("packed_cache needs a GGUF model file: %s is loaded through a temporary "
                                 "conversion (convert it once with python -m rwkv_cpp.convert)" % self.path)
            # rwkv.cpp .bin: load a temporary GGUF conversion, removed when the
            # model is freed, when loading fails, or at the latest at exit
            load_path, folder = convert_to_temp(self.path)
            self._temp_dir = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        params = lib.rwkv_model_default_params()
        params.use_mmap = bool(use_mmap)
        params.repack = bool(repack)
        params.packed_isa = _PACKED_ISA[packed_isa]
        cache_path = ffi.NULL if packed_cache is None else ffi.new("char[]", os.fsencode(packed_cache))
        params.packed_cache = cache_path
        out = ffi.new("struct rwkv_model **")
        errbuf = ffi.new("char[]", _ERROR_BUF_SIZE)
        status = lib.rwkv_model_load(os.fsencode(load_path), params, out, errbuf, _ERROR_BUF_SIZE)
        if status != lib.RWKV_STATUS_OK:
            raise error_for(status, _string(errbuf))
        self._model = out[0]

    def _read_shape(self):
        self.n_vocab = int(lib.rwkv_model_n_vocab(self._model))
        self.n_embed = int(lib.rwkv_model_n_embed(self._model))
        self.n_layer = int(lib.rwkv_model_n_layer(self._model))
        self.version = _string(lib.rwkv_model_version(self._model))
        self.tokenizer_name = _string(lib.rwkv_model_tokenizer(self._model))
        self.type = _string(lib.rwkv_type_str(lib.rwkv_model_type(self._model)))
        # bytes of matrices laid out for the packed kernels (0: all with ggml)
        self.packed_bytes = int(lib.rwkv_model_packed_bytes(self._model))
        self.packed_kernels_name = _string(lib.rwkv_model_packed_kernels_name(self._model))
        self.state_len = int(lib.rwkv_model_state_len(self._model))
        # a tuned initial state in the file (state tuning): init_state() and
        # state=None start from it
        self.has_tuned_state = bool(lib.rwkv_model_has_tuned_state(self._model))

    @classmethod
    def default(cls, n_threads=None, **kwargs):
        """Opens the demo model bundled with the package: a small RWKV-4
        trained on Shakespeare (models/MODEL_CARD.md), 20B tokenizer."""
        path = bundled_model_path()
        if path is None:
            raise ModelIOError(lib.RWKV_STATUS_ERROR_IO, "the bundled demo model is missing from this installation")
        return cls(path, n_threads=n_threads, **kwargs)

    def context(self, n_threads=None, *, max_chunk_tokens=0):
        """A new ``Context`` of this model with ``n_threads`` compute threads
        (``None``: every online CPU).  Close it, or use it in ``with``."""
        return Context(self, n_threads, max_chunk_tokens=max_chunk_tokens)

    # -- lifetime -----------------------------------------------------------

    def close(self):
        """Closes every context of the model (waiting for evaluations in
        progress), then frees the model.  Safe to call more than once."""
        with self._contexts_lock:
            self._closing = True
            contexts = list(self._contexts)
        for ctx in contexts:
            ctx.close()
        with self._lock:
            if self._default_ctx != ffi.NULL:
                lib.rwkv_context_free(self._default_ctx)
                self._default_ctx = ffi.NULL
        self._free_if_unused()

    def _attach(self, context, n_threads, max_chunk_tokens):
        """Makes the C object of a new ``context`` (while no ``close`` can
        free the model) and registers it; ``(pointer, n_threads)``."""
        with self._contexts_lock:
            self._check_open()
            made = _new_context(self._model, n_threads, max_chunk_tokens)
            self._n_open += 1
            self._contexts.add(context)
        return made

    def _detach(self):
        """A context of this model was freed."""
        with self._contexts_lock:
            self._n_open -= 1
        self._free_if_unused()

    def _free_if_unused(self):
        # the C model must outlive its contexts (rwkv.h): free it once it is
        # closed and the last context is gone
        with self._contexts_lock:
            if not self._closing or self._n_open > 0:
                return
            if self._model != ffi.NULL:
                lib.rwkv_model_free(self._model)
                self._model = ffi.NULL
        if self._temp_dir is not None:
            self._temp_dir()  # a weakref.finalize: runs once
            self._temp_dir = None

    @property
    def closed(self):
        return self._closing or self._model == ffi.NULL

    def _check_open(self):
        if self.closed:
            raise _invalid("the model is closed")

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
        """Evaluates one token on the default context (see ``Context.eval``)."""
        return self.eval_sequence([_check_token(token)], state, out_logits=out_logits, out_state=out_state)

    def eval_sequence(self, tokens, state=None, *, out_logits=None, out_state=None, logits=True,
                      all_logits=False):
        """Evaluates tokens on the default context (see ``Context.eval_sequence``)."""
        with self._lock:
            if self._default_ctx == ffi.NULL:
                raise _invalid("the model is closed")
            return _eval_sequence(self._default_ctx, self, tokens, state, out_logits, out_state, logits,
                                  all_logits)


    def eval_batch(self, sequences, states=None):
        """Evaluates several independent sequences on the default context
        (see ``Context.eval_batch``)."""
        with self._lock:
            if self._default_ctx == ffi.NULL:
                raise _invalid("the model is closed")
            return _eval_batch(self._default_ctx, self, sequences, states)


def _from_model(name):
    return property(lambda self: getattr(self.model, name), doc="The model's ``%s``." % name)


class Context:
    """An evaluation context of a ``Model``: its own compute graphs, buffers
    and ``n_threads`` compute threads.

    One thread at a time: a call while another thread is evaluating on the
    same context raises ``RuntimeError``; give each thread its own context.
    The context keeps its model alive; ``close()`` (idempotent, also on
    leaving ``with``) frees it, and ``Model.close()`` closes it too.  The
    model's shape (``n_vocab``, ``state_len``, ``version``, ...) is readable
    here as well, so the functions of ``rwkv_cpp.generate``,
    ``rwkv_cpp.embedding`` and ``rwkv_cpp.state_file`` take a context
    wherever they take a model.

    >>> with model.context(n_threads=1) as ctx:
    ...     logits, state = ctx.eval_sequence([1, 2, 3])
    """

    n_vocab = _from_model("n_vocab")
    n_embed = _from_model("n_embed")
    n_layer = _from_model("n_layer")
    version = _from_model("version")
    tokenizer_name = _from_model("tokenizer_name")
    type = _from_model("type")
    state_len = _from_model("state_len")
    has_tuned_state = _from_model("has_tuned_state")
    path = _from_model("path")

    def __init__(self, model, n_threads=None, *, max_chunk_tokens=0):
        self._ctx = ffi.NULL
        self._busy = threading.Lock()  # held during an evaluation
        self.model = model
        self._ctx, self.n_threads = model._attach(self, n_threads, max_chunk_tokens)

    def close(self):
        """Frees the context (after an evaluation in progress).  Safe to
        call more than once."""
        with self._busy:
            if self._ctx == ffi.NULL:
                return
            lib.rwkv_context_free(self._ctx)
            self._ctx = ffi.NULL
        self.model._detach()

    @property
    def closed(self):
        return self._ctx == ffi.NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if getattr(self, "_ctx", ffi.NULL) != ffi.NULL:
                self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self):
        return "<rwkv_cpp.Context%s n_threads=%d of %r>" % (" (closed)" if self.closed else "", self.n_threads,
                                                           self.model)

    def init_state(self):
        """A new initial state (float32 array of ``state_len``)."""
        return self.model.init_state()

    @contextlib.contextmanager
    def _evaluating(self):
        """Holds the context for one evaluation and yields its C pointer;
        raises RuntimeError when another thread is evaluating on it."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Context is evaluating on another thread; a context is for one thread "
                               "at a time: give each thread its own (model.context())")
        try:
            if self._ctx == ffi.NULL:
                raise _invalid("the context is closed")
            yield self._ctx
        finally:
            self._busy.release()

    def eval(self, token, state=None, *, out_logits=None, out_state=None):
        """Evaluates one token.

        Returns ``(logits, new_state)``: float32 arrays of ``n_vocab`` and
        ``state_len``.  ``state=None`` means the initial state; the given
        state is not modified.  ``out_logits`` / ``out_state`` may be
        preallocated float32 arrays to write into.
        """
        return self.eval_sequence([_check_token(token)], state, out_logits=out_logits, out_state=out_state)

    def eval_sequence(self, tokens, state=None, *, out_logits=None, out_state=None, logits=True,
                      all_logits=False):
        """Evaluates tokens in order (any length >= 1).

        Returns ``(logits, new_state)``.  The logits are those of the last
        token (``n_vocab``); with ``all_logits=True`` those of every token,
        shape ``(n_tokens, n_vocab)``; with ``logits=False`` the head is
        skipped and ``None`` is returned instead.
        """
        with self._evaluating() as ctx:
            return _eval_sequence(ctx, self.model, tokens, state, out_logits, out_state, logits, all_logits)

    def eval_batch(self, sequences, states=None):
        """Evaluates ``n_seq`` independent sequences, each from its own state.

        ``sequences`` is a list of token lists (each of length >= 1: one
        token to decode, many for a prompt); ``states`` is None (every
        sequence from the initial state), a list of float32 arrays or None
        items, or an ``(n_seq, state_len)`` float32 array.  Returns
        ``(logits, states)``: float32 arrays of shape ``(n_seq, n_vocab)``
        (each sequence's last-token logits) and ``(n_seq, state_len)``.
        The given states are not modified.
        """
        with self._evaluating() as ctx:
            return _eval_batch(ctx, self.model, sequences, states)


def packed_kernels_available():
    """Whether this CPU runs the library's own matrix kernels (AVX-512 VNNI
    or AVX2), the ones ``Model(repack=True)`` lays the weights out for."""
    return bool(lib.rwkv_packed_kernels_available())


def packed_kernels_name():
    """The instruction set of those kernels: "AVX-512 VNNI", "AVX2" or "none"."""
    return ffi.string(lib.rwkv_packed_kernels_name()).decode()
