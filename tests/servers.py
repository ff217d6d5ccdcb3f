"""A real uvicorn server for one test: the app served in a thread of this process, on a socket
bound to 127.0.0.1 port 0, with the options ``shopvault serve`` uses."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from app.server import uvicorn_options


@contextmanager
def serving(app: Any, **overrides: Any) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL. The app's lifespan runs on the
    server's event loop, as in production."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, **{**uvicorn_options(), **overrides}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        listener.close()
