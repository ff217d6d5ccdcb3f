"""The ASGI application: ``app.main:app``, built by ``create_app``."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from app.admin.router import router as admin_router
from app.audit.router import router as audit_router
from app.auth.router import router as auth_router
from app.config import Settings
from app.contracts.router import router as contracts_router
from app.customers.read_route import CustomerReadRoute
from app.customers.router import router as customers_router
from app.documents.router import router as documents_router
from app.logs import configure_logging
from app.messages.router import router as messages_router
from app.middleware import Metrics, RequestMiddleware
from app.ops.docs import docs_router
from app.ops.router import router as ops_router
from app.policy import render_markdown, render_operations_markdown
from app.problems import declare_problems, install_problem_handlers
from app.retention.rules import render_markdown as render_retention_markdown
from app.rights.router import router as rights_router
from app.runtime import Runtime
from app.subject_requests.router import router as subject_requests_router
from app.visits.router import router as visits_router
from app.visits.service import ensure_service_keys

log = logging.getLogger("shopvault.app")

DESCRIPTION = """
shopvault answers, in software, the questions customers ask about shops: *who can see my data,
when, and why?* Every request that touches personal data declares a purpose
(`X-Access-Purpose`); the caller's role and the purpose decide which fields leave the service,
and every access, allowed or denied, is recorded before any data is returned.

Errors are RFC 9457 problem details (`application/problem+json`); each `type` is stable.
"""


POLICY_SECTION = f"""

## The policy: role × purpose → field groups

*visit*: `X-Visit-Id` of an open visit for this customer at your store (*repair_visit*: of type
`repair`); *reason*: `X-Access-Reason`; a manager without a visit gives a reason and the access is
queued for review. `—` is denied.

{render_markdown()}

## Who may do what: operation × role

Each route declares its operation; a role without a ✓ is refused (`403`, recorded). Routes that
take a purpose also need a policy row above for it.

{render_operations_markdown()}
"""

RETENTION_SECTION = f"""

## Retention rules

How long records are kept, counted from what, and why (`app/retention/rules.py`). A record is
kept until its `retain_until` date (Asia/Tokyo) and is due for disposal from the day after; a
null `retain_until` means it is kept while its basis lasts (an active contract, a granted
marketing consent) and is set when that basis ends.

{render_retention_markdown()}
"""


CORS_METHODS = ("GET", "POST", "PATCH", "DELETE")
CORS_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "X-Access-Purpose",
    "X-Access-Reason",
    "X-Request-Id",
    "X-Subject-Request-Id",
    "X-Terminal-Id",
    "X-Visit-Id",
)
CORS_EXPOSED_HEADERS = ("Retry-After", "WWW-Authenticate", "X-Request-Id")


def announce_limits(settings: Settings) -> None:
    """Where rate limits, presence locks and refusal summaries are counted: a chain of several
    API processes needs Redis, or each process counts on its own."""
    if settings.redis_url:
        log.info("limits shared through Redis", extra={"event": "startup"})
    else:
        log.warning(
            "limits kept in this process's memory: several API processes each count on their "
            "own (set SHOPVAULT_REDIS_URL to share them)",
            extra={"event": "startup"},
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime = Runtime.build(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        announce_limits(settings)
        await ensure_service_keys(runtime)
        # What start-up built lives as long as the app: out of the collector's way while it
        # serves, so that its full passes (which stop every request in flight) walk only what
        # requests made; back in its care when the app stops (tests build many apps). No
        # collection first: a full one per start-up made the test suite a third slower, and
        # what start-up left as garbage is a little memory until shutdown.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await runtime.close()

    app = FastAPIOffline(
        # Our own pages (app/ops/docs.py): no inline script, for the Content-Security-Policy.
        docs_url=None,
        redoc_url=None,
        title="shopvault",
        version="0.1.0",
        description=DESCRIPTION + POLICY_SECTION + RETENTION_SECTION,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    install_problem_handlers(app)
    # Innermost: the hot read is answered in front of FastAPI's router, inside the request
    # middleware (request id, headers, metrics, log line) and CORS like every route.
    app.add_middleware(CustomerReadRoute, runtime=runtime)
    if settings.cors_origin_list:
        # Inside the request middleware, so that preflight answers carry its headers too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_REQUEST_HEADERS),
            expose_headers=list(CORS_EXPOSED_HEADERS),
            # Bearer tokens, never cookies: nothing for a browser to attach by itself.
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(RequestMiddleware, metrics=metrics)
    app.include_router(docs_router(app))
    for router in (
        ops_router,
        auth_router,
        admin_router,
        visits_router,
        customers_router,
        contracts_router,
        messages_router,
        audit_router,
        documents_router,
        subject_requests_router,
        rights_router,
    ):
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = declare_problems(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def __getattr__(name: str) -> Any:
    # ``app.main:app`` is built on first access, so that importing this module (tests, the CLI)
    # does not read the environment or touch the data directory.
    if name == "app":
        application = app_from_environment()
        globals()["app"] = application
        return application
    raise AttributeError(name)
