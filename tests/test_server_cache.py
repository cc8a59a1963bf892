"""The server's prompt-state cache: the LRU itself (longest proper prefix,
eviction order, the byte bound), a 10-turn chat whose every turn sends the
whole history but prefills only its own new tokens, and the bound held
under load."""

import re

import httpx
import numpy as np
import pytest

from rwkv_cpp.server.cache import KEY_TOKEN_BYTES, PromptCache

STATE = 100  # floats per state in the unit tests


def state(value):
    return np.full(STATE, value, dtype=np.float32)


def entry(n_tokens):
    return n_tokens * KEY_TOKEN_BYTES + STATE * 4


def test_longest_proper_prefix():
    cache = PromptCache(1 << 20)
    cache.put([1, 2], state(2))
    cache.put([1, 2, 3, 4], state(4))
    cache.put([9], state(9))
    n, s = cache.longest_prefix([1, 2, 3, 4, 5])
    assert n == 4 and s[0] == 4
    n, s = cache.longest_prefix([1, 2, 3, 4])  # itself is not a proper prefix: one token must remain
    assert n == 2 and s[0] == 2
    assert cache.longest_prefix([1]) == (0, None)
    assert cache.longest_prefix([7, 1, 2]) == (0, None)
    assert (cache.hits, cache.misses) == (2, 2)
    with pytest.raises(ValueError):
        s[0] = 1  # the cached state is read-only


def test_lru_order_and_the_bound():
    cache = PromptCache(3 * entry(2))
    for i in range(3):
        cache.put([i, i], state(i))
    cache.longest_prefix([0, 0, 5])  # 0 becomes the most recent
    cache.put([3, 3], state(3))  # evicts 1, the least recently used
    assert cache.longest_prefix([1, 1, 5]) == (0, None)
    assert cache.longest_prefix([0, 0, 5])[0] == 2 and cache.longest_prefix([3, 3, 5])[0] == 2
    assert cache.bytes == 3 * entry(2) and cache.evictions == 1
    assert not cache.put(list(range(10 ** 4)), state(0))  # alone larger than the bound: not kept
    assert not PromptCache(0).put([1], state(0))


def test_bound_holds_for_any_sequence_of_puts():
    rng = np.random.default_rng(0)
    limit = 5 * entry(8)
    cache = PromptCache(limit)
    for _ in range(500):
        tokens = rng.integers(0, 4, rng.integers(1, 40)).tolist()
        cache.put(tokens, state(len(tokens)))
        assert cache.bytes <= limit
        assert cache.bytes == sum(entry(len(k) // KEY_TOKEN_BYTES) for k in cache._entries)
        n, s = cache.longest_prefix(tokens + [0])
        assert n == len(tokens) and s[0] == len(tokens)


# -- through the server ------------------------------------------------------------------

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

from rwkv_cpp import tokenizers  # noqa: E402
from rwkv_cpp._defaults import default_model_path  # noqa: E402
from server_helpers import running_server  # noqa: E402

MODEL = default_model_path()
QUESTIONS = ["Who goes there?", "Stand and unfold yourself.", "Long live the king!", "You come most carefully.",
             "Tis now struck twelve.", "For this relief much thanks.", "Have you had quiet guard?",
             "Not a mouse stirring.", "Well, good night.", "Who hath relieved you?"]


def metric(url, name):
    text = httpx.get(url + "/metrics").text
    return float(re.search(r"^%s (\S+)$" % re.escape(name), text, re.M).group(1))


def chat_turns(url, name):
    """The 10-turn chat, each turn with the whole history; yields each
    turn's (reply, usage, tokens prefilled by the turn)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    history = []
    for i, question in enumerate(QUESTIONS):
        history.append({"role": "user", "content": question})
        before = metric(url, "rwkv_prompt_tokens_prefilled_total")
        r = client.chat.completions.create(model=name, messages=history, max_tokens=8, seed=i, temperature=0.8)
        reply = r.choices[0].message.content
        history.append({"role": "assistant", "content": reply})
        yield reply, r.usage, metric(url, "rwkv_prompt_tokens_prefilled_total") - before


def test_ten_turn_chat_prefills_only_each_new_turn():
    with running_server(MODEL, threads=1) as (url, engine):
        tok = tokenizers.for_model(engine.model)
        turns = list(chat_turns(url, engine.config.served_name))
        hits = metric(url, "rwkv_cache_hits_total")
    with running_server(MODEL, threads=1, state_cache_mb=0) as (url, engine):
        uncached = list(chat_turns(url, engine.config.served_name))
    for i, ((reply, usage, prefilled), (plain_reply, plain_usage, _)) in enumerate(zip(turns, uncached)):
        new = len(tok.encode("User: %s\n\n" % QUESTIONS[i]) + tok.encode("Assistant:"))
        expected_cached = 0 if i == 0 else usage.prompt_tokens - new
        assert usage.prompt_tokens_details.cached_tokens == expected_cached, i
        assert prefilled == usage.prompt_tokens - expected_cached, i
        # the cached state gives the reply a full prefill gives
        assert reply == plain_reply and usage.prompt_tokens == plain_usage.prompt_tokens, i
        assert plain_usage.prompt_tokens_details.cached_tokens == 0
    assert hits == len(QUESTIONS) - 1


def test_cache_never_exceeds_its_bound():
    limit_mb = 0.1  # three states of the demo model (30 KiB each) and their keys
    with running_server(MODEL, threads=1, state_cache_mb=limit_mb) as (url, engine):
        limit = int(limit_mb * 2 ** 20)
        for i in range(8):
            r = httpx.post(url + "/v1/completions", json={"prompt": "Scene %d. A hall." % i, "max_tokens": 1})
            assert r.status_code == 200
            assert engine.cache.bytes <= limit and len(engine.cache) <= 3
            assert metric(url, "rwkv_cache_bytes") <= metric(url, "rwkv_cache_limit_bytes") == limit
        assert engine.cache.evictions >= 5
