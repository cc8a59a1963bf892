"""``rwkv_cpp.Model``: the model of ``rwkv_cpp._model`` with the package's
conveniences as methods.

Layers, each importing only those below it::

    _lib, errors, legacy, _defaults
                              the cffi binding, exceptions, .bin loading,
                              the bundled model's path
    _model                    Model (struct rwkv_model) and Context
                              (struct rwkv_context), one class per C object
    sidecar, tokenizers, sampling, _scoring
    state_file, embedding, generation
                              functions taking a Model or a Context
    batching                  the continuous-batching scheduler, generate_many
    llama_compat              llama-cpp-python's calls (create_completion, ...)
    model                     this module: Model with generate,
                              generate_many, save_state, load_state, embed
                              and embed_many methods, and llama-cpp-python's
                              create_completion (also __call__),
                              create_chat_completion, tokenize and detokenize
    _cli                      what the command-line programs share
    chat, perplexity, ...     command-line programs

The methods below only forward to those functions, so they add no state and
no thread-safety rule of their own: a ``Model`` is shared by threads; on
several threads at once, give each its own ``model.context()`` and call the
functions (``rwkv_cpp.generation.generate(ctx, ...)``,
``rwkv_cpp.embedding.embed(ctx, ...)``) with it.
"""

from . import _model, batching, embedding, llama_compat, state_file
from ._model import Context, packed_kernels_available, packed_kernels_name
from .generation import generate as _generate

__all__ = ["Model", "Context", "packed_kernels_available", "packed_kernels_name"]


class Model(_model.Model):
    __doc__ = _model.Model.__doc__

    def generate(self, prompt, max_tokens=200, sampling=None, state=None, tokenizer=None, *, logits=None,
                 stop_at_eos=True, temperature=None, top_p=None, top_k=None, stop=None, seed=None):
        """Generates text after ``prompt`` on the default context; returns a
        ``Generation``, an iterator of text pieces as they become valid UTF-8
        (its ``text`` runs it to the end).  ``temperature``, ``top_p``,
        ``top_k``, ``stop`` and ``seed`` override the fields of ``sampling``
        (a ``SamplingParams``).  See ``rwkv_cpp.generation.generate``."""
        self._check_open()
        return _generate(self, prompt, max_tokens, sampling, state, tokenizer, logits=logits,
                         stop_at_eos=stop_at_eos, temperature=temperature, top_p=top_p, top_k=top_k,
                         stop=stop, seed=seed)

    def generate_many(self, prompts, max_tokens=200, sampling=None, *, max_batch=8, tokenizer=None,
                      stop_at_eos=True):
        """Generates text after each of ``prompts`` with continuous batching
        on the default context; returns the texts in prompt order.  See
        ``rwkv_cpp.batching.generate_many``."""
        self._check_open()
        return batching.generate_many(self, prompts, max_tokens, sampling, max_batch=max_batch,
                                      tokenizer=tokenizer, stop_at_eos=stop_at_eos)

    def save_state(self, path, state, logits=None):
        """Writes ``state`` (and optionally the ``logits`` that go with it)
        to a state file recording this model's shape and fingerprint."""
        state_file.save(path, self, state, logits)

    def load_state(self, path, *, with_logits=False, check_fingerprint=True):
        """The state saved in ``path`` (``(state, logits or None)`` with
        ``with_logits=True``).  A file saved from another model raises
        ``rwkv_cpp.state_file.StateFileError`` (a ValueError)."""
        state, logits = state_file.load(path, self, check_fingerprint)
        return (state, logits) if with_logits else state

    def embed(self, text_or_tokens, *, parts=None, stats=None, state=None, tokenizer=None):
        """The sentence embedding of a text (``str``/``bytes``, through the
        model's tokenizer) or of token ids: the selected ``parts`` of the
        state after reading it (default ``embedding.DEFAULT_PARTS``), z-scored
        per channel with ``stats`` (an ``EmbedStats`` or the path of a file
        from ``python -m rwkv_cpp.embed_stats``) when given.  ``state``
        continues from a state instead of the initial one.  float32 vector;
        see docs/EMBEDDING.md."""
        return embedding.embed(self, text_or_tokens, parts or embedding.DEFAULT_PARTS, stats,
                               state=state, tokenizer=tokenizer)

    def embed_many(self, texts, *, parts=None, stats=None, tokenizer=None, progress=None):
        """Embeddings of many texts or token sequences (each from the
        initial state): float32 array ``(len(texts), dim)``."""
        return embedding.embed_many(self, texts, parts or embedding.DEFAULT_PARTS, stats,
                                    tokenizer=tokenizer, progress=progress)

    # -- llama-cpp-python's calls (rwkv_cpp.llama_compat) ---------------------

    def create_completion(self, prompt, max_tokens=llama_compat.DEFAULT_MAX_TOKENS, **kwargs):
        """A completion as llama-cpp-python's ``Llama.create_completion``
        returns it (``out["choices"][0]["text"]``, ``usage``; chunks with
        ``stream=True``).  See ``rwkv_cpp.llama_compat.create_completion``."""
        self._check_open()
        return llama_compat.create_completion(self, prompt, max_tokens, **kwargs)

    __call__ = create_completion

    def create_chat_completion(self, messages, **kwargs):
        """The reply to OpenAI-style ``messages`` in the RWKV chat format, as
        llama-cpp-python returns it.  See
        ``rwkv_cpp.llama_compat.create_chat_completion``."""
        self._check_open()
        return llama_compat.create_chat_completion(self, messages, **kwargs)

    def tokenize(self, text, add_bos=True, special=False):
        """Token ids of ``text`` (bytes or str) with the model's tokenizer."""
        return llama_compat.tokenize(self, text, add_bos, special)

    def detokenize(self, tokens, prev_tokens=None, special=False):
        """The bytes of ``tokens`` with the model's tokenizer."""
        return llama_compat.detokenize(self, tokens, prev_tokens, special)
