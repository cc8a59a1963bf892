"""The server under faults: a full queue gives 429 with Retry-After, a
client that disconnects mid-stream frees its slot, and a property-based
fuzzer over the request schema (hypothesis) never gets a 5xx."""

import json
import time

import httpx
import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rwkv_cpp._defaults import default_model_path  # noqa: E402
from rwkv_cpp.server.protocol import Limits  # noqa: E402
from server_helpers import running_server  # noqa: E402

MODEL = default_model_path()
LONG = {"prompt": "ROMEO:", "max_tokens": 2000, "stream": True, "seed": 1}


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def read_lines(response, n):
    """Reads ``n`` lines of a stream; returns the line iterator, which must
    stay referenced: when it is collected, httpx closes the connection."""
    lines = response.iter_lines()
    for _ in range(n):
        next(lines)
    return lines


def test_full_queue_gives_429():
    with running_server(MODEL, threads=1, max_batch=1, max_queue=1) as (url, engine):
        with httpx.Client(base_url=url, timeout=30) as web:
            with web.stream("POST", "/v1/completions", json=LONG) as a, \
                    web.stream("POST", "/v1/completions", json=LONG) as b:
                assert a.status_code == b.status_code == 200
                a_lines = read_lines(a, 2)  # noqa: F841 (keeps the stream open)
                r = web.post("/v1/completions", json={"prompt": "a", "max_tokens": 1})
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "rate_limit_error"
                client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
                with pytest.raises(openai.RateLimitError):
                    client.completions.create(model=engine.config.served_name, prompt="a", max_tokens=1)
        wait_for(lambda: engine._admitted == 0)
        assert web_ok(url)


def web_ok(url):
    r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=30)
    return r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_disconnect_mid_stream_frees_the_slot():
    with running_server(MODEL, threads=1, max_batch=1, max_queue=0) as (url, engine):
        start = time.perf_counter()
        assert web_ok(url)
        alone = time.perf_counter() - start
        with httpx.Client(base_url=url, timeout=30) as web:
            with web.stream("POST", "/v1/completions", json=LONG) as r:
                lines = read_lines(r, 6)  # noqa: F841 (the stream runs: its job holds the only slot)
                assert len(engine.scheduler.active) == 1
        # the connection is closed: the job is cancelled at the next pass
        wait_for(lambda: not engine.scheduler.active and not engine.scheduler.waiting and engine._admitted == 0)
        start = time.perf_counter()
        assert web_ok(url)  # capacity 1: served, so the slot was free
        assert time.perf_counter() - start < 10 * alone + 1.0
        metrics = httpx.get(url + "/metrics").text
        assert "rwkv_active_requests 0.0" in metrics


# -- the fuzzer -------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


def field(good):
    """A field's value: mostly plausible, sometimes anything JSON holds."""
    return st.one_of(good, good, JSON_VALUES)


MESSAGE = st.fixed_dictionaries(
    {"role": field(st.sampled_from(["system", "user", "assistant", "developer", "tool"])),
     "content": field(st.text(max_size=40) | st.lists(st.fixed_dictionaries(
         {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=10)}), max_size=2))})
COMMON = {
    "model": field(st.sampled_from(["rwkv4-shakespeare-L8-D192-Q5_1", "gpt-4", ""])),
    "max_tokens": field(st.integers(-3, 12)),
    "temperature": field(st.floats(-1, 3)), "top_p": field(st.floats(-0.5, 1.5)),
    "top_k": field(st.integers(-2, 100)),
    "presence_penalty": field(st.floats(-3, 3)), "frequency_penalty": field(st.floats(-3, 3)),
    "penalty_decay": field(st.floats(-1, 2)),
    "stop": field(st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=10)),
    "stream": field(st.booleans()), "seed": field(st.integers(-2 ** 64, 2 ** 65)), "n": field(st.integers(0, 3)),
    "logprobs": field(st.integers(0, 2) | st.booleans()), "user": field(st.text(max_size=5)),
    "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
}
PROMPT = st.text(max_size=30) | st.lists(st.integers(-5, 60000), max_size=8) | st.lists(st.text(max_size=5), max_size=3)
BODIES = {
    "/v1/completions": st.fixed_dictionaries({}, optional=dict(COMMON, prompt=field(PROMPT), echo=field(st.booleans()),
                                                                 suffix=field(st.text(max_size=3)))),
    "/v1/chat/completions": st.fixed_dictionaries({}, optional=dict(COMMON, messages=field(
        st.lists(MESSAGE, max_size=3)), max_completion_tokens=field(st.integers(-1, 12)))),
    "/v1/embeddings": st.fixed_dictionaries({}, optional={
        "model": COMMON["model"], "input": field(PROMPT),
        "encoding_format": field(st.sampled_from(["float", "base64", "int8"])), "dimensions": field(st.integers())}),
}
REQUESTS = st.sampled_from(sorted(BODIES)).flatmap(
    lambda path: st.tuples(st.just(path), BODIES[path].map(lambda b: json.dumps(b).encode()) | st.binary(max_size=40)))


@pytest.fixture(scope="module")
def fuzz_server():
    limits = Limits(max_prompt_tokens=64, max_tokens=8)
    with running_server(MODEL, threads=1, limits=limits) as (url, engine):
        with httpx.Client(base_url=url, timeout=60) as web:
            yield web, engine


@settings(max_examples=80, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=REQUESTS)
def test_fuzzed_requests_never_get_a_5xx(fuzz_server, request):
    web, engine = fuzz_server
    path, body = request
    with web.stream("POST", path, content=body, headers={"Content-Type": "application/json"}) as r:
        text = r.read().decode("utf-8")
    assert r.status_code < 500, (path, body, r.status_code, text)
    if r.status_code >= 400:
        error = json.loads(text)["error"]
        assert error["message"] and error["type"]
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert text.endswith("data: [DONE]\n\n"), text
    assert engine.status == "ready"


def test_deeply_nested_json_is_a_400(fuzz_server):
    web, _ = fuzz_server
    r = web.post("/v1/completions", content=b"[" * 100000 + b"]" * 100000)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
