"""An OpenAI-compatible HTTP server: ``python -m rwkv_cpp.server``.

One model in memory, one scheduler thread running every request through
batched evaluation (continuous batching), a prompt-state cache, and the
OpenAI routes ``/v1/completions``, ``/v1/chat/completions``,
``/v1/embeddings`` and ``/v1/models``, with ``/health`` and ``/metrics``.
Needs the ``server`` extra (``pip install 'rwkv-ggml[server]'``).

Modules: ``cache.py`` (the prompt-state LRU), ``protocol.py`` (request
schema, sampling translation, chat template, errors), ``metrics.py``
(Prometheus), ``engine.py`` (the scheduler thread), ``app.py`` (the
Starlette routes), ``__main__.py`` (the command line).
"""
