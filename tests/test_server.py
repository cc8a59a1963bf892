"""python -m rwkv_cpp.server through the real ``openai`` client, on a
loopback port: completions and chat (streamed and not) equal
``Model.generate`` with the same settings, stop strings never reach the
text, seeds reproduce, embeddings equal ``Model.embed``; the errors a
client can cause are OpenAI-shaped 4xx."""

import json

import httpx
import numpy as np
import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

import rwkv_cpp  # noqa: E402
from rwkv_cpp._defaults import default_model_path  # noqa: E402
from rwkv_cpp.sampling import SamplingParams  # noqa: E402
from rwkv_cpp.server.protocol import ChatTemplate  # noqa: E402
from server_helpers import running_server  # noqa: E402

MODEL = default_model_path()
# one compute thread: on a shared 2-core machine, two spinning ggml threads
# beside the HTTP threads of this process slow every step tenfold
SETTINGS = dict(temperature=0.9, top_p=0.9, presence_penalty=0.3, frequency_penalty=0.2)


@pytest.fixture(scope="module")
def server():
    with running_server(MODEL, max_batch=4, threads=1) as (url, engine):
        yield url, engine


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model():
    with rwkv_cpp.Model(MODEL, n_threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def name(server):
    return server[1].config.served_name


def solo(model, prompt, max_tokens, seed, stop=(), state=None, logits=None, **settings):
    """``Model.generate`` with the sampling the server derives from the same
    OpenAI fields (no decay of the penalties, as OpenAI's)."""
    s = dict(SETTINGS, **settings)
    params = SamplingParams(temperature=s["temperature"], top_p=s["top_p"], alpha_presence=s["presence_penalty"],
                            alpha_frequency=s["frequency_penalty"], alpha_decay=1.0, stop=tuple(stop), seed=seed)
    g = model.generate(prompt, max_tokens, params, state=state, logits=logits)
    return g.read(), g


def streamed(chunks, chat=False):
    text, reasons, usage = "", [], None
    for chunk in chunks:
        for choice in chunk.choices:
            text += (choice.delta.content or "") if chat else choice.text
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
        usage = getattr(chunk, "usage", None) or usage
    return text, reasons, usage


def test_completion_equals_generate(client, model, name):
    prompt = "ROMEO:\nWhat light"
    text, g = solo(model, prompt, 20, seed=7)
    r = client.completions.create(model=name, prompt=prompt, max_tokens=20, seed=7, **SETTINGS)
    assert r.choices[0].text == text
    assert r.choices[0].finish_reason == ("length" if g.stop_reason == "max_tokens" else "stop")
    assert r.usage.prompt_tokens == len(g.prompt_tokens)
    assert r.usage.completion_tokens == len(g.tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    stream = client.completions.create(model=name, prompt=prompt, max_tokens=20, seed=7, stream=True, **SETTINGS)
    s_text, reasons, usage = streamed(stream)
    assert s_text == text and reasons == [r.choices[0].finish_reason]
    assert usage.completion_tokens == r.usage.completion_tokens


def test_same_seed_same_text_and_token_prompts(client, model, name):
    tokens = rwkv_cpp.tokenizers.for_model(model).encode("JULIET:\nO")
    a = client.completions.create(model=name, prompt=tokens, max_tokens=12, seed=3).choices[0].text
    b = client.completions.create(model=name, prompt="JULIET:\nO", max_tokens=12, seed=3).choices[0].text
    others = {client.completions.create(model=name, prompt=tokens, max_tokens=12, seed=s).choices[0].text
              for s in (4, 5)}
    assert a == b
    assert others != {a}


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_across_tokens_is_cut(client, model, name, stream):
    prompt = "KING HENRY:\nNow"
    free, g = solo(model, prompt, 24, seed=11, temperature=0.0)
    # a stop string that spans a token boundary inside the free text
    ends = np.cumsum([len(model_tok) for model_tok in
                      (rwkv_cpp.tokenizers.for_model(model).decode([t]) for t in g.tokens)])
    cut = next(int(e) for e in ends if 4 <= e <= len(free) - 3)
    stop = free[cut - 2: cut + 2]
    assert len(stop) == 4
    expected = free[:free.find(stop)]
    kw = dict(model=name, prompt=prompt, max_tokens=24, seed=11, stop=[stop], **dict(SETTINGS, temperature=0.0))
    if stream:
        text, reasons, _ = streamed(client.completions.create(stream=True, **kw))
    else:
        r = client.completions.create(**kw)
        text, reasons = r.choices[0].text, [r.choices[0].finish_reason]
    assert text == expected and stop not in text
    assert reasons == ["stop"]


def test_chat_equals_generate_on_the_template(client, model, name):
    tok = rwkv_cpp.tokenizers.for_model(model)
    messages = [{"role": "user", "content": "Who is there?"}]
    ids = ChatTemplate().render([("user", "Who is there?")], tok.encode)
    assert ids == tok.encode("User: Who is there?\n\n") + tok.encode("Assistant:")
    logits, state = model.eval_sequence(ids)  # generate continues from the rendered tokens
    text, g = solo(model, "", 16, seed=5, stop=("\n\n",), state=state, logits=logits)
    r = client.chat.completions.create(model=name, messages=messages, max_tokens=16, seed=5, **SETTINGS)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids)
    s_text, reasons, usage = streamed(client.chat.completions.create(
        model=name, messages=messages, max_tokens=16, seed=5, stream=True, stream_options={"include_usage": True},
        **SETTINGS), chat=True)
    assert s_text == text and reasons == [r.choices[0].finish_reason]
    assert usage.completion_tokens == r.usage.completion_tokens


def test_embeddings_and_models(client, model, name):
    r = client.embeddings.create(model=name, input=["to be or not", "to be"])
    assert [d.index for d in r.data] == [0, 1]
    for d, text in zip(r.data, ["to be or not", "to be"]):
        np.testing.assert_array_equal(np.array(d.embedding, dtype=np.float32), model.embed(text))
    floats = client.embeddings.create(model=name, input="to be", encoding_format="float")
    np.testing.assert_array_equal(np.array(floats.data[0].embedding, dtype=np.float32), model.embed("to be"))
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    assert [m.id for m in client.models.list().data] == [name]
    assert client.models.retrieve(name).id == name


def error_of(response):
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("path,body,status", [
    ("/v1/completions", b"{not json", 400),
    ("/v1/completions", b"[1, 2]", 400),
    ("/v1/completions", b'{"prompt": "a", "max_tokens": NaN}', 400),
    ("/v1/completions", json.dumps({"prompt": 5}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "a", "max_tokens": "5"}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "a", "max_tokens": -1}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "a", "max_tokens": 10 ** 30}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "a", "temperature": -1}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "a", "n": 2}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "a", "model": "gpt-4"}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": [1, 2, 10 ** 9]}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": [-1]}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": ""}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "a", "stop": [""]}).encode(), 400),
    ("/v1/completions", json.dumps({"prompt": "a", "seed": 2 ** 70}).encode(), 400),
    ("/v1/chat/completions", json.dumps({"messages": []}).encode(), 400),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), 400),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user"}]}).encode(), 400),
    ("/v1/embeddings", json.dumps({"input": []}).encode(), 400),
    ("/v1/embeddings", json.dumps({"input": "a", "dimensions": 3}).encode(), 400),
    ("/v1/nothing", b"{}", 404),
])
def test_bad_requests_get_openai_errors(server, path, body, status):
    r = httpx.post(server[0] + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error_of(r)


def test_limits_and_methods(server):
    url = server[0]
    big = httpx.post(url + "/v1/completions", content=b" " * (2 << 20), timeout=30)
    assert big.status_code == 413 and error_of(big)["code"] == "body_too_large"
    assert httpx.get(url + "/v1/completions", timeout=30).status_code == 405
    long_prompt = httpx.post(url + "/v1/completions", json={"prompt": [1] * 5000}, timeout=30)
    assert long_prompt.status_code == 400 and "at most" in error_of(long_prompt)["message"]
    assert "access-control-allow-origin" not in httpx.options(
        url + "/v1/models", headers={"Origin": "http://x", "Access-Control-Request-Method": "GET"}).headers
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_metrics_count_requests_and_tokens(server, client, name):
    client.completions.create(model=name, prompt="Hark", max_tokens=3, seed=1)
    text = httpx.get(server[0] + "/metrics").text
    for metric in ("rwkv_requests_total", "rwkv_generated_tokens_total", "rwkv_prompt_tokens_total",
                   "rwkv_queue_depth", "rwkv_batch_size_bucket", "rwkv_cache_hits_total",
                   "rwkv_generated_tokens_per_second"):
        assert metric in text, metric
    assert 'rwkv_requests_total{path="/v1/completions",status="200"}' in text


def test_auth():
    with running_server(MODEL, api_key="sesame", threads=1) as (url, engine):
        assert httpx.get(url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "sesame"}):
            r = httpx.get(url + "/v1/models", headers=headers)
            assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
        assert httpx.post(url + "/v1/completions", json={"prompt": "a"}).status_code == 401
        good = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert good.models.list().data[0].id == engine.config.served_name
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_health_is_503_while_loading():
    from starlette.testclient import TestClient

    from rwkv_cpp.server.app import create_app
    from rwkv_cpp.server.engine import Engine, EngineConfig
    from rwkv_cpp.server.metrics import Metrics

    engine = Engine(EngineConfig(model_path=MODEL), Metrics())  # never started: still loading
    web = TestClient(create_app(engine))
    assert web.get("/health").status_code == 503
    r = web.post("/v1/completions", json={"prompt": "a"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_chat_template_from_a_file(tmp_path):
    path = tmp_path / "template.json"
    path.write_text(json.dumps({"roles": {"user": "Q: {content}\n"}, "assistant_prefix": "A:", "stop": ["\nQ:"]}))
    template = ChatTemplate.from_file(path)
    pieces = []
    template.render([("system", "Be brief."), ("user", "Hi\n\n\nthere"), ("assistant", " Hello. ")], lambda p: pieces.append(p) or [])
    assert pieces == ["System: Be brief.\n\n", "Q: Hi\nthere\n", "A:", " Hello.\n\n", "A:"]
    assert template.stop == ("\nQ:",)
    for bad in ({"roles": {"user": "no placeholder"}}, {"roles": []}, {"stop": [""]}, {"other": 1},
                {"roles": {"user": "{content} {x}"}}):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            ChatTemplate.from_file(path)


def test_the_program(tmp_path):
    """python -m rwkv_cpp.server as a user starts it: a refused template, a
    model that does not load, then a real start on a free port."""
    import subprocess
    import sys

    from server_helpers import free_socket, wait_ready

    bad = tmp_path / "bad.json"
    bad.write_text("{")
    run = [sys.executable, "-m", "rwkv_cpp.server", "--threads", "1", "--log-level", "warning"]
    res = subprocess.run(run + ["--chat-template", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "--chat-template" in res.stderr
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(20))
    with free_socket() as sock:
        port = sock.getsockname()[1]
    res = subprocess.run(run + ["--model", str(tmp_path / "broken.gguf"), "--port", str(port)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "broken.gguf" in res.stderr
    proc = subprocess.Popen(run + ["--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready("http://127.0.0.1:%d" % port, 60)
        r = httpx.post("http://127.0.0.1:%d/v1/completions" % port, json={"prompt": "Hark", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "serving" in out and "127.0.0.1:%d" % port in out


def test_initial_state_file(tmp_path, model):
    """--initial-state: every request starts from the given state (here a
    state file saved after a prompt), as Model.generate(state=...) does;
    a later request that extends a cached prompt still starts from it."""
    _, state = model.eval_sequence(model.tokenize(b"JULIET:\nO Romeo, Romeo"))
    path = tmp_path / "start.state"
    model.save_state(path, state)
    prompt = "\nROMEO:\nShe speaks"
    text, g = solo(model, prompt, 16, seed=3, state=state)
    plain, _ = solo(model, prompt, 16, seed=3)
    assert text != plain  # the start matters for this prompt
    with running_server(MODEL, max_batch=2, threads=1, initial_state=str(path)) as (url, engine):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        name = engine.config.served_name
        for _ in range(2):  # the second time through the prompt cache
            r = client.completions.create(model=name, prompt=prompt, max_tokens=16, seed=3, **SETTINGS)
            assert r.choices[0].text == text
        r = client.completions.create(model=name, prompt=prompt + " yet", max_tokens=16, seed=3, **SETTINGS)
        assert r.choices[0].text == solo(model, prompt + " yet", 16, seed=3, state=state)[0]
