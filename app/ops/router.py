"""Health, readiness, metrics and the catalogue of problem types."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.audit.service import open_alerts_by_rule
from app.db import DatabaseUnavailable
from app.errors import MetricsLoopbackOnly, Problem, ServiceUnavailable, Unauthorized
from app.kit.deps import RuntimeDep
from app.messages.metrics import refresh_outbox_gauges
from app.migrate import head_revisions
from app.problems import problem_catalogue, problem_responses
from app.runtime import Runtime

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
async def readyz(runtime: RuntimeDep) -> dict[str, str]:
    """The database is reachable and migrated to the latest revision."""
    try:
        async with runtime.engine.connect() as connection:
            rows = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    except DatabaseUnavailable as exc:
        raise ServiceUnavailable("The database is not reachable or not migrated.") from exc
    if frozenset(row[0] for row in rows) != head_revisions():
        raise ServiceUnavailable("The database is not at the latest migration.")
    return {"status": "ready"}


def _metrics_caller_may_read(request: Request, runtime: Runtime) -> Problem | None:
    """Counts of 403s and 404s per route are reconnaissance: with ``METRICS_TOKEN`` set, its
    bearer token is needed; without it, only a peer on the loopback interface is answered (not
    one that is a trusted proxy: what it relays comes from elsewhere)."""
    expected = runtime.settings.metrics_token
    if expected is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            token.encode(), expected.get_secret_value().encode()
        ):
            return None
        return Unauthorized("/metrics needs the metrics bearer token.")
    peer = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return MetricsLoopbackOnly()
    proxied = any(address in network for network in runtime.settings.trusted_proxy_networks)
    return None if address.is_loopback and not proxied else MetricsLoopbackOnly()


@router.get("/metrics", response_class=Response, responses=problem_responses(401, 403))
async def metrics(request: Request, runtime: RuntimeDep) -> Response:
    """Prometheus metrics (request counts and latencies by route template, outbox gauges, open
    alerts by rule). With `SHOPVAULT_METRICS_TOKEN` set, send it as a bearer token; without it,
    only loopback callers are answered."""
    refused = _metrics_caller_may_read(request, runtime)
    if refused is not None:
        raise refused
    metrics = request.app.state.metrics
    await refresh_outbox_gauges(runtime, metrics.registry)
    try:
        open_alerts = await open_alerts_by_rule(runtime)
    except DatabaseUnavailable:
        open_alerts = None  # the request metrics are still worth serving
    if open_alerts is not None:
        for rule, count in open_alerts.items():
            metrics.open_alerts.labels(rule).set(count)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/problems", include_in_schema=False)
async def problems() -> list[dict[str, Any]]:
    return problem_catalogue()


@router.get("/problems/{slug}", include_in_schema=False)
async def problem(slug: str) -> dict[str, Any]:
    for entry in problem_catalogue():
        if entry["type"] == "/problems/" + slug:
            return entry
    from app.errors import NotFound

    raise NotFound()
