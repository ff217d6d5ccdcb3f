"""ASGI middleware: request id, size limits (request target, headers, body), security headers,
metrics and the access log line."""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import HeadersTooLarge, PayloadTooLarge, Problem, UriTooLong
from app.problems import problem_response
from app.request_context import request_id_var
from app.security_headers import security_headers

MAX_BODY_BYTES = 1024 * 1024
# Neither HTTP parser uvicorn offers bounds these reliably (app/server.py): the app does.
MAX_TARGET_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100
_INCOMING_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")

log = logging.getLogger("shopvault.http")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shopvault_http_requests",
            "HTTP requests by route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "shopvault_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ("method", "route"),
            registry=self.registry,
        )
        self.open_alerts = Gauge(
            "shopvault_open_alerts",
            "Open audit alerts by rule.",
            ("rule",),
            registry=self.registry,
        )


def _oversized(scope: Scope) -> Problem | None:
    """A request target or headers beyond the limits: refused before any work."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    if target > MAX_TARGET_BYTES:
        return UriTooLong()
    fields = scope.get("headers") or []
    if len(fields) > MAX_HEADER_FIELDS or (
        sum(len(name) + len(value) for name, value in fields) > MAX_HEADER_BYTES
    ):
        return HeadersTooLarge()
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _INCOMING_REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                extra = [(b"x-request-id", request_id.encode())]
                existing = message.get("headers", [])
                if not any(name.lower() == b"cache-control" for name, _ in existing):
                    # Personal data must never sit in a cache; nothing here is worth caching.
                    extra.append((b"cache-control", b"no-store"))
                content_type = next(
                    (value for name, value in existing if name.lower() == b"content-type"), None
                )
                extra.extend(security_headers(content_type))
                message["headers"] = [*existing, *extra]
            await send(message)

        try:
            refused = _oversized(scope)
            if refused is not None:
                await problem_response(refused, request_id)(scope, receive, send_with_id)
                return
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
                response = problem_response(PayloadTooLarge(), request_id)
                await response(scope, receive, send_with_id)
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > MAX_BODY_BYTES:
                        raise PayloadTooLarge()
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except Exception:
                # Answer here, where the request id is known; the outer error middleware still
                # sees (and logs) the exception, but finds the response already sent.
                if not responded:
                    await problem_response(Problem(), request_id)(scope, receive, send_with_id)
                raise
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope.get("method", "-")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)
