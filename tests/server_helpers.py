"""What the server tests and the server bench share: a server on a loopback
socket in a thread of this process (``running_server``), and a free port."""

import contextlib
import socket
import threading
import time

import httpx

from rwkv_cpp.server.app import create_app
from rwkv_cpp.server.engine import Engine, EngineConfig
from rwkv_cpp.server.metrics import Metrics


def free_socket():
    """A listening-ready TCP socket bound to a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running_server(model_path, *, api_key=None, ready_timeout=60, **engine_args):
    """``(base_url, engine)`` of a server in a thread of this process, on a
    free loopback port, ready to serve; stopped on exit."""
    import uvicorn

    engine = Engine(EngineConfig(model_path=str(model_path), **engine_args), Metrics())
    app = create_app(engine, api_key=api_key)
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    try:
        wait_ready(url, ready_timeout)
        yield url, engine
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_ready(url, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the server at %s was not ready after %g s" % (url, timeout))
        time.sleep(0.05)
