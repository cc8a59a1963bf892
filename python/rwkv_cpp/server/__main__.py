"""``python -m rwkv_cpp.server``: serve a model over an OpenAI-compatible API.

    python -m rwkv_cpp.server --model MODEL.gguf --port 8000
    # then, in Python:
    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="MODEL", prompt="Hello", max_tokens=20)
"""

import argparse
import logging
import sys

from .._cli import add_initial_state_argument, add_packed_cache_argument, positive_int, resolve_model_path

EPILOG = """\
routes: POST /v1/completions, /v1/chat/completions, /v1/embeddings; GET /v1/models,
/health (503 while loading, 200 when ready), /metrics (Prometheus text).

chat template: each message becomes "User: TEXT\\n\\n" (system: "System: TEXT\\n\\n"),
an assistant message "Assistant: TEXT\\n\\n", and the prompt ends with "Assistant:";
a reply ends at a blank line. --chat-template FILE replaces it with a JSON object
{"roles": {"system": ..., "user": ..., "assistant": ...}, "assistant_prefix": ..., "stop": [...]}
whose role strings hold {content}.

request extensions beyond OpenAI's fields: top_k (0 = off) and penalty_decay (the
per-token decay of the penalties' counts, default 1 = none, as OpenAI's).

needs the server extra: pip install 'rwkv-ggml[server]'
"""


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m rwkv_cpp.server", description="Serve an RWKV model over an OpenAI-compatible HTTP API "
        "with continuous batching and a prompt-state cache.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model file (.gguf or rwkv.cpp .bin); default: the bundled demo model")
    ap.add_argument("--model-name", help="the model id clients name (default: the file name without .gguf)")
    ap.add_argument("--tokenizer", help="override the model's tokenizer: world, 20B or bytes")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default %(default)s: this machine only; 0.0.0.0 for every "
                    "interface: use --api-key then)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    ap.add_argument("--threads", type=positive_int, default=None, help="compute threads (default: all CPUs)")
    add_packed_cache_argument(ap)
    ap.add_argument("--max-batch", type=positive_int, default=8,
                    help="sequences evaluated together in one step (default %(default)s)")
    ap.add_argument("--max-queue", type=int, default=64,
                    help="requests that may wait for a batch slot; beyond it a request gets 429 with "
                    "Retry-After (default %(default)s)")
    ap.add_argument("--state-cache-mb", type=float, default=256.0,
                    help="bound of the prompt-state cache in MiB; 0 turns it off (default %(default)s)")
    ap.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health")
    ap.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                    help="allow cross-origin requests from ORIGIN (repeatable; '*' for any); none by default")
    ap.add_argument("--chat-template", metavar="FILE", help="JSON chat template (see below)")
    add_initial_state_argument(ap)
    ap.add_argument("--embed-stats", metavar="FILE",
                    help="statistics file (python -m rwkv_cpp.embed_stats) to z-score /v1/embeddings")
    limits = ap.add_argument_group("limits")
    limits.add_argument("--max-body-bytes", type=positive_int, default=1 << 20,
                        help="largest request body (default %(default)s)")
    limits.add_argument("--max-prompt-tokens", type=positive_int, default=4096,
                        help="longest prompt, chat history included (default %(default)s)")
    limits.add_argument("--max-tokens-limit", type=positive_int, default=2048,
                        help="largest max_tokens a request may ask for (default %(default)s)")
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                    help="uvicorn's log level (default %(default)s)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import uvicorn

        from .app import create_app
        from .engine import Engine, EngineConfig
        from .metrics import Metrics
        from .protocol import ChatTemplate, Limits
    except ImportError as exc:
        sys.exit("error: the server needs the server extra (pip install 'rwkv-ggml[server]'): %s" % exc)
    if args.max_queue < 0 or args.state_cache_mb < 0 or not 0 <= args.port < 65536:
        sys.exit("error: --max-queue and --state-cache-mb must be >= 0 and --port in 0..65535")
    try:
        template = ChatTemplate.from_file(args.chat_template) if args.chat_template else ChatTemplate()
    except (OSError, ValueError) as exc:
        sys.exit("error: --chat-template: %s" % exc)
    model_path = resolve_model_path(args)
    if model_path is None:
        sys.exit(2)
    config = EngineConfig(model_path=model_path, model_name=args.model_name, threads=args.threads,
                          packed_cache=args.packed_cache, max_batch=args.max_batch, max_queue=args.max_queue,
                          state_cache_mb=args.state_cache_mb,
                          tokenizer=args.tokenizer, embed_stats=args.embed_stats, initial_state=args.initial_state,
                          template=template,
                          limits=Limits(max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens_limit))
    failed = []

    def stop_serving(message):  # the model did not load: nothing to serve
        failed.append(message)
        server.should_exit = True

    engine = Engine(config, Metrics(), on_load_error=stop_serving)
    app = create_app(engine, api_key=args.api_key, cors_origins=args.cors, max_body_bytes=args.max_body_bytes)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=5))
    print("serving %s as %r on http://%s:%d/v1 (GET /health says when the model is loaded)"
          % (model_path, config.served_name, args.host, args.port), flush=True)
    server.run()
    if failed:
        sys.exit("error: %s: %s" % (model_path, failed[0]))


if __name__ == "__main__":
    main()
