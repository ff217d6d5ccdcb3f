"""How uvicorn serves the app: one set of options, used by ``shopvault serve`` and by the tests
that talk to a real server."""

from __future__ import annotations

from typing import Any

# Seconds an idle keep-alive connection is kept open (a POS terminal reconnects cheaply; idle
# sockets are what slow clients hold on to).
KEEP_ALIVE_SECONDS = 5
# Seconds SIGTERM waits for requests in flight before closing their connections.
GRACEFUL_SHUTDOWN_SECONDS = 20
# Connections and tasks at once per process before uvicorn answers 503 itself: bounded memory
# under a flood, well above what a shop's terminals and the systems open.
MAX_CONCURRENCY = 1000


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
        # Header sizes are limited by the app (``app/middleware.py``, 431): neither HTTP parser
        # uvicorn offers bounds them reliably.
    }
