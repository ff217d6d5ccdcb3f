"""How uvicorn serves the app: one set of options, used by ``shopvault serve`` and by the tests
that talk to a real server; and several worker processes that share the load evenly.

uvicorn's own workers share one listening socket: whichever process wakes first accepts every
connection waiting, so a burst of connections (a POS back office opening its pool, a load
balancer) lands on one worker while the others idle — measured: 32 connections opened at once,
all 32 on one of two workers, four times out of four. Here each worker listens on a socket of
its own on the same port (``SO_REUSEPORT``), and the kernel spreads new connections over them.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn

# Seconds an idle keep-alive connection is kept open (a POS terminal reconnects cheaply; idle
# sockets are what slow clients hold on to).
KEEP_ALIVE_SECONDS = 5
# Seconds SIGTERM waits for requests in flight before closing their connections.
GRACEFUL_SHUTDOWN_SECONDS = 20
# Connections and tasks at once per process before uvicorn answers 503 itself: bounded memory
# under a flood, well above what a shop's terminals and the systems open.
MAX_CONCURRENCY = 1000
# Connections waiting to be accepted, per worker.
BACKLOG = 2048


def uvicorn_options() -> dict[str, Any]:
    return {
        # The app reads X-Forwarded-For itself, and only from SHOPVAULT_TRUSTED_PROXIES.
        "proxy_headers": False,
        "forwarded_allow_ips": "",
        # No "server: uvicorn" banner: the software and its version are nobody's business.
        "server_header": False,
        # The app writes its own access log line (route templates, not raw paths).
        "access_log": False,
        "log_config": None,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "limit_concurrency": MAX_CONCURRENCY,
        "backlog": BACKLOG,
        # Header sizes are limited by the app (``app/middleware.py``, 431): neither HTTP parser
        # uvicorn offers bounds them reliably.
    }


def _listening_socket(host: str, port: int, *, shared: bool = True) -> socket.socket:
    """A listening socket of this process's own on ``host:port``; ``shared``: in the port's
    group of ``SO_REUSEPORT`` sockets (the kernel lets only processes of the same user join
    it). Unshared, it fails while anything listens there (another ``shopvault serve`` too)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the serving process (``parent``) dies (Linux), even by SIGKILL:
    no worker keeps the port without its supervisor."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # it was already gone
            os.kill(os.getpid(), signal.SIGTERM)


def _worker(app: str, host: str, port: int, parent: int) -> None:
    _die_with_parent(parent)
    config = uvicorn.Config(app, host=host, port=port, **uvicorn_options())
    uvicorn.Server(config).run(sockets=[_listening_socket(host, port)])


def serve(app: str, *, host: str, port: int, workers: int) -> int:
    """Serve ``app`` (``module:attribute``) until SIGTERM or SIGINT; the exit status. With
    several workers, each listens on a socket of its own; if one of them ends by itself, the
    others are stopped and the status is 1 (whatever supervises the service starts it again).
    Raises ``OSError`` if the port cannot be listened on."""
    if workers == 1 or port == 0 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(app, host=host, port=port, workers=workers, **uvicorn_options())
        return 0
    _listening_socket(host, port, shared=False).close()  # nobody listens there: fail here, once
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker, args=(app, host, port, os.getpid()), name=f"shopvault-worker-{n}"
        )
        for n in range(workers)
    ]
    stopping = False

    def terminate() -> None:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    def stop(_signal: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    crashed = False
    try:
        for process in processes:
            if stopping:
                break
            process.start()
            if stopping:  # asked to stop while this one was starting
                terminate()
        started = [process for process in processes if process.pid is not None]
        multiprocessing.connection.wait([process.sentinel for process in started])
        if not stopping:
            crashed = True
            print("shopvault: a worker stopped by itself; stopping the others", file=sys.stderr)
    finally:
        terminate()
        for process in processes:
            if process.pid is not None:
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if crashed else 0
