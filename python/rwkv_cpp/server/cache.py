"""The prompt-state cache: RWKV states keyed by the token prefix that led to
them, in an LRU bounded by bytes.

An RWKV state summarises everything read so far in a fixed number of floats,
so a conversation can be resumed from the state after its last turn instead
of re-reading the whole history.  ``PromptCache.put(tokens, state)`` keeps the
state reached after ``tokens`` (from the initial state); ``longest_prefix``
finds, for a new prompt, the longest kept key that is a *proper* prefix of
it (at least one token must remain to be evaluated, since the cache keeps
states, not logits).

Size of an entry: the state's bytes plus its key (4 bytes a token).  The
total never exceeds ``limit_bytes``: the least recently used entries are
dropped first, and an entry larger than the whole limit is not kept.
Lookup cost: one hash per distinct key length held (the keys are the
prompts' token ids as little-endian uint32 bytes).
"""

import collections
import threading

import numpy as np

#: bytes of one token of a key
KEY_TOKEN_BYTES = 4


def _key(tokens):
    return np.asarray(tokens, dtype="<u4").tobytes()


class PromptCache:
    """An LRU of ``{token prefix: state}`` bounded by ``limit_bytes``.

    Thread-safe (one lock), though the server touches it from its
    scheduler thread only.  ``hits``, ``misses`` and ``evictions`` count
    lookups and drops since creation.
    """

    def __init__(self, limit_bytes):
        if limit_bytes < 0:
            raise ValueError("the cache limit must be >= 0 bytes, got %r" % (limit_bytes,))
        self.limit_bytes = int(limit_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries = collections.OrderedDict()  # key bytes -> state (float32, read-only)
        self._lengths = collections.Counter()  # key length in tokens -> number of entries
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._entries)

    @staticmethod
    def entry_bytes(n_tokens, state):
        return n_tokens * KEY_TOKEN_BYTES + state.nbytes

    def put(self, tokens, state):
        """Keeps ``state`` (copied) as the state after ``tokens``; returns
        whether it was kept (False when it alone exceeds the limit)."""
        if not len(tokens):
            return False
        state = np.array(state, dtype=np.float32, copy=True)
        state.setflags(write=False)
        size = self.entry_bytes(len(tokens), state)
        if size > self.limit_bytes:
            return False
        key = _key(tokens)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = state
            self._lengths[len(tokens)] += 1
            self.bytes += size
            while self.bytes > self.limit_bytes:
                self._drop(next(iter(self._entries)))
                self.evictions += 1
        return True

    def longest_prefix(self, tokens):
        """``(n, state)``: the longest kept key that is a proper prefix of
        ``tokens`` (``n`` tokens long) and its state, marked as recently
        used; ``(0, None)`` when there is none.  Counts a hit or a miss."""
        key = _key(tokens)
        with self._lock:
            for n in sorted((n for n in self._lengths if n < len(tokens)), reverse=True):
                prefix = key[: n * KEY_TOKEN_BYTES]
                state = self._entries.get(prefix)
                if state is not None:
                    self._entries.move_to_end(prefix)
                    self.hits += 1
                    return n, state
            self.misses += 1
            return 0, None

    def _drop(self, key):
        state = self._entries.pop(key)
        n = len(key) // KEY_TOKEN_BYTES
        self._lengths[n] -= 1
        if not self._lengths[n]:
            del self._lengths[n]
        self.bytes -= self.entry_bytes(n, state)
