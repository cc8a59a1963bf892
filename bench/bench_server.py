"""Load test of the OpenAI-compatible server (python -m rwkv_cpp.server) on
loopback: many concurrent streaming clients against one server process.

    python -m bench.bench_server [--clients 32] [--seconds 60] [--max-tokens 64]
                                 [--model-shape 169m] [--type Q5_1] [--threads 2]
    python -m bench.bench_server --smoke      # tiny model, 4 clients, 3 s

Steps:

1. the random-weight RWKV-4 model of the shape (bench.harness.rwkv4_files,
   cached in bench/cache/) is served by ``python -m rwkv_cpp.server`` in a
   child process, with ``--max-batch`` = the number of clients;
2. solo: one client streams each of ``--pairs`` (prompt, seed) requests in
   turn; its texts are the references and its tokens/s the one-client rate;
3. load: ``--clients`` clients stream those same requests (client i starts
   at pair i and cycles) for ``--seconds``; the requests still running then
   are finished and counted.  Each stream's text must equal the solo text of
   its (prompt, seed): a request that fails, ends without ``[DONE]`` or
   differs is counted as lost or corrupted;
4. a table: aggregate generated tokens/s (usage.completion_tokens over the
   wall time) beside the solo rate, time to first token (request sent to
   first non-empty text) and time per output token (each stream's first to
   last text piece over its tokens) at p50 and p99, and the server's peak
   RSS (VmHWM); then, from the server's /metrics, its batched steps during
   the load (how many, their mean batch size and time).

Timings on a shared machine are noisy: read the ratio against the solo rate,
taken in the same run.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import httpx
import numpy as np

from . import harness

WORDS = ("night", "crown", "river", "letter", "sword", "garden", "winter", "bell", "queen", "storm", "field", "ship")


@dataclass
class Stream:
    """One streamed request: what came back and when."""

    pair: int
    text: str = ""
    tokens: int = 0
    ttft: Optional[float] = None
    last: Optional[float] = None  # seconds from the request to the last text piece
    pieces: int = 0
    complete: bool = False
    error: Optional[str] = None


def prompts(n):
    """``n`` distinct prompts, none a prefix of another (no cache effects)."""
    return ["Request %d: the %s and the %s. " % (i, WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)])
            for i in range(n)]


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, port, args):
    cmd = [sys.executable, "-m", "rwkv_cpp.server", "--model", str(model), "--port", str(port),
           "--threads", str(args.threads), "--max-batch", str(args.clients), "--max-queue", str(args.clients),
           "--log-level", "warning", "--max-tokens-limit", str(max(args.max_tokens, 16))]
    proc = subprocess.Popen(cmd, cwd=harness.REPO, stdout=subprocess.DEVNULL)
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited (%d): %s" % (proc.returncode, " ".join(cmd)))
        try:
            health = httpx.get(url + "/health", timeout=2)
            if health.status_code == 200:
                return proc, url
        except httpx.TransportError:
            continue
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server was not ready after 300 s")


async def stream_one(client, pair, prompt, seed, max_tokens):
    out = Stream(pair)
    body = {"prompt": prompt, "max_tokens": max_tokens, "seed": seed, "stream": True, "temperature": 1.0,
            "top_p": 0.9}
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                out.error = "HTTP %d" % r.status_code
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out.complete = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out.error = chunk["error"]["message"]
                    break
                piece = chunk["choices"][0]["text"] if chunk["choices"] else ""
                if piece:
                    out.last = time.perf_counter() - start
                    out.ttft = out.last if out.ttft is None else out.ttft
                    out.pieces += 1
                    out.text += piece
                out.tokens = (chunk.get("usage") or {}).get("completion_tokens", out.tokens)
    except httpx.HTTPError as exc:
        out.error = repr(exc)
    return out


async def solo(url, texts, seeds, max_tokens):
    """Each pair alone, one after the other: ``(streams, seconds)``."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await stream_one(client, -1, "Warm-up. ", 0, 2)  # first-request costs (tokenizer, graphs) not timed
        start = time.perf_counter()
        streams = []
        for i in range(len(texts)):
            streams.append(await stream_one(client, i, texts[i], seeds[i], max_tokens))
            progress("solo: %d/%d requests, %.0f s" % (i + 1, len(texts), time.perf_counter() - start))
        return streams, time.perf_counter() - start


async def load(url, texts, seeds, args):
    """``args.clients`` clients cycling through the pairs for ``args.seconds``."""
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    done = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + args.seconds

        async def one_client(i):
            k = i
            while time.perf_counter() < deadline:
                pair = k % len(texts)
                done.append(await stream_one(client, pair, texts[pair], seeds[pair], args.max_tokens))
                k += args.clients

        progress("load: %d clients for %g s ..." % (args.clients, args.seconds))
        await asyncio.gather(*(one_client(i) for i in range(args.clients)))
        return done, time.perf_counter() - start


def scheduler_totals(url):
    """The server's batched steps so far, from /metrics: their number, the
    sequences they held and their seconds."""
    names = {"rwkv_step_seconds_count": "steps", "rwkv_step_seconds_sum": "seconds",
             "rwkv_batch_size_sum": "sequences"}
    totals = dict.fromkeys(names.values(), 0.0)
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            totals[names[name]] = float(value)
    return totals


def progress(line):
    print(line, file=sys.stderr, flush=True)


def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def per_token(streams):
    """Time per output token of each stream: from its first text piece to
    its last, over the tokens in between (pieces that arrive in one read
    would make gap statistics meaningless)."""
    return [(s.last - s.ttft) / (s.tokens - 1) for s in streams if s.complete and s.tokens > 1 and s.pieces > 1]


def percentile_ms(values, q):
    return "%.1f" % (1000 * np.percentile(values, q)) if values else "-"


def report(args, model, solo_streams, solo_s, streams, load_s, rss):
    reference = {s.pair: s.text for s in solo_streams}
    lost = [s for s in streams if s.error or not s.complete]
    corrupted = [s for s in streams if not (s.error or not s.complete) and s.text != reference[s.pair]]
    solo_rate = sum(s.tokens for s in solo_streams) / solo_s
    rate = sum(s.tokens for s in streams if s.complete) / load_s
    ttft = [s.ttft for s in streams if s.ttft is not None]
    gaps = per_token(streams)
    solo_ttft = [s.ttft for s in solo_streams if s.ttft is not None]
    solo_gaps = per_token(solo_streams)
    print("\n%s" % harness.machine_line(args.threads))
    print("model: %s (random weights), %d max tokens a request, %d (prompt, seed) pairs\n"
          % (model.name, args.max_tokens, args.pairs))
    harness.print_table(
        ["run", "clients", "requests", "lost", "corrupted", "tokens/s", "vs solo", "TTFT p50 ms", "TTFT p99 ms",
         "per-token p50 ms", "per-token p99 ms", "server peak RSS MiB"],
        [["solo", 1, len(solo_streams), 0, 0, "%.1f" % solo_rate, "1.00x", percentile_ms(solo_ttft, 50),
          percentile_ms(solo_ttft, 99), percentile_ms(solo_gaps, 50), percentile_ms(solo_gaps, 99), ""],
         ["load", args.clients, len(streams), len(lost), len(corrupted), "%.1f" % rate, "%.2fx" % (rate / solo_rate),
          percentile_ms(ttft, 50), percentile_ms(ttft, 99), percentile_ms(gaps, 50), percentile_ms(gaps, 99),
          "%.0f" % rss]])
    for s in (lost + corrupted)[:5]:
        print("pair %d: %s" % (s.pair, s.error or ("incomplete" if not s.complete else "text differs from solo")))
    return not lost and not corrupted


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32, help="concurrent streaming clients (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the load phase (default %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default %(default)s)")
    ap.add_argument("--pairs", type=int, default=32,
                    help="distinct (prompt, seed) requests, each run once alone first (default %(default)s)")
    ap.add_argument("--model-shape", default="169m", choices=sorted(harness.SHAPES),
                    help="random RWKV-4 shape (default %(default)s)")
    ap.add_argument("--type", default="Q5_1", help="weight type (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="the server's compute threads (default %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model, 4 clients, 3 s, 8 tokens: checks the bench runs")
    ap.add_argument("--cache-dir", default=None, help="folder for the generated models (default: bench/cache)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.clients, args.seconds, args.max_tokens, args.pairs = 4, 3.0, 8, 4
        args.model_shape, args.type, args.threads = "smoke", "FP16", 1
    if args.cache_dir:
        harness.CACHE = Path(args.cache_dir)
    model = harness.rwkv4_files(args.model_shape, [args.type])[args.type]
    texts, seeds = prompts(args.pairs), [1000 + i for i in range(args.pairs)]
    proc, url = start_server(model, free_port(), args)
    try:
        solo_streams, solo_s = asyncio.run(solo(url, texts, seeds, args.max_tokens))
        before = scheduler_totals(url)
        streams, load_s = asyncio.run(load(url, texts, seeds, args))
        rss = peak_rss_mib(proc.pid)
        steps = {k: v - before[k] for k, v in scheduler_totals(url).items()}
    finally:
        proc.terminate()
        proc.wait(30)
    ok = report(args, model, solo_streams, solo_s, streams, load_s, rss)
    if steps["steps"]:
        print("\nscheduler during the load: %d batched steps, %.1f sequences a step on average, %.1f ms a step "
              "(the scheduler thread's own time, %.0f%% of the load's wall time)"
              % (steps["steps"], steps["sequences"] / steps["steps"], 1000 * steps["seconds"] / steps["steps"],
                 100 * steps["seconds"] / load_s))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
