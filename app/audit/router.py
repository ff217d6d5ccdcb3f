"""``/access-events``, ``/alerts``, ``/reviews`` (auditors) and the customer's access report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app.access.context import AccessContext
from app.access.deps import AccessTo
from app.audit import report, service
from app.audit.alerts import RuleName
from app.audit.auditor_repository import EventFilters
from app.audit.schemas import (
    AccessEventPage,
    AccessReport,
    AlertOut,
    AlertPage,
    AlertResolve,
    ReviewCreate,
    ReviewOut,
    ReviewPage,
    VerificationOut,
)
from app.kit.deps import RuntimeDep
from app.kit.schemas import Instant
from app.policy import Operation, Purpose
from app.problems import problem_responses
from app.uow import UnitOfWorkDep

router = APIRouter(responses=problem_responses(400, 401, 403))

AuditLogReader = Annotated[AccessContext, AccessTo(Operation.READ_AUDIT_LOG)]
AlertHandler = Annotated[AccessContext, AccessTo(Operation.HANDLE_ALERTS)]
Reviewer = Annotated[AccessContext, AccessTo(Operation.REVIEW_ACCESSES)]
ReportReader = Annotated[AccessContext, AccessTo(Operation.READ_ACCESS_REPORT)]

Limit = Annotated[int, Query(ge=1, le=500, description="At most 500.")]
Cursor = Annotated[
    str | None, Query(max_length=300, description="The `next` value of the previous page.")
]


@router.get("/access-events", response_model=AccessEventPage, tags=["audit"])
async def list_access_events(
    ctx: AuditLogReader,
    uow: UnitOfWorkDep,
    customer_id: Annotated[str | None, Query(max_length=36)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    store: Annotated[str | None, Query(max_length=16)] = None,
    purpose: Purpose | None = None,
    outcome: Literal["allowed", "denied"] | None = None,
    since: Annotated[Instant | None, Query(alias="from", description="Inclusive.")] = None,
    until: Annotated[Instant | None, Query(alias="to", description="Exclusive.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> AccessEventPage:
    """The access log, newest first (auditor, purpose `audit`, with a reason).

    Reading the log is itself recorded."""
    filters = EventFilters(
        customer_id=customer_id,
        actor=actor,
        store=store,
        purpose=purpose.value if purpose else None,
        outcome=outcome,
        since=since,
        until=until,
    )
    return await service.list_events(uow, ctx, filters, limit=limit, cursor=cursor)


@router.get(
    "/access-events/verify",
    response_model=VerificationOut,
    tags=["audit"],
    responses=problem_responses(503),
)
async def verify_access_events(
    ctx: AuditLogReader,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    full: Annotated[
        bool, Query(description="Every event, not only those since the last verified checkpoint.")
    ] = False,
) -> VerificationOut:
    """Verify the access log against its chains, heads, registry and newest checkpoint.

    Problems: `tail-truncated`, `chain-missing`, `chain-unregistered`, `hash-mismatch`,
    `seq-gap`. A passing verification writes a checkpoint."""
    return await service.verify_log(uow, runtime, ctx, full=full)


@router.get("/alerts", response_model=AlertPage, tags=["audit"])
async def list_alerts(
    ctx: AlertHandler,
    uow: UnitOfWorkDep,
    status: Literal["open", "resolved"] | None = None,
    rule: RuleName | None = None,
    store: Annotated[str | None, Query(max_length=16)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> AlertPage:
    """Alerts, most recently active first (auditor, purpose `audit`)."""
    return await service.list_alerts(
        uow,
        ctx,
        status=status,
        rule=rule.value if rule else None,
        store=store,
        limit=limit,
        cursor=cursor,
    )


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=AlertOut,
    tags=["audit"],
    responses=problem_responses(404, 409),
)
async def resolve_alert(
    ctx: AlertHandler, alert_id: str, body: AlertResolve, uow: UnitOfWorkDep
) -> AlertOut:
    """Resolve an open alert with a note (recorded)."""
    return await service.resolve_alert(uow, ctx, alert_id, body.note)


@router.get("/reviews", response_model=ReviewPage, tags=["audit"])
async def list_reviews(
    ctx: Reviewer,
    uow: UnitOfWorkDep,
    pending: Annotated[bool | None, Query(description="Only pending (or only reviewed).")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> ReviewPage:
    """Accesses queued for review (a manager's look without a visit): pending first."""
    return await service.list_reviews(uow, ctx, pending=pending, limit=limit, cursor=cursor)


@router.post(
    "/reviews/{event_id}",
    status_code=201,
    response_model=ReviewOut,
    tags=["audit"],
    responses=problem_responses(404, 409),
)
async def review_access(
    ctx: Reviewer, event_id: str, body: ReviewCreate, uow: UnitOfWorkDep
) -> ReviewOut:
    """Review an access: `ok` or `escalate`, with a note. Kept beside the event, never in it."""
    return await service.review_access(uow, ctx, event_id, body)


@router.get(
    "/customers/{customer_id}/access-report",
    response_model=AccessReport,
    response_model_by_alias=True,
    tags=["customers"],
    responses={
        **problem_responses(404),
        200: {"content": {"text/html": {"schema": {"type": "string"}}}},
    },
)
async def customer_access_report(
    ctx: ReportReader,
    customer_id: str,
    request: Request,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    since: Annotated[Instant | None, Query(alias="from", description="Inclusive.")] = None,
    until: Annotated[Instant | None, Query(alias="to", description="Exclusive.")] = None,
    format: Annotated[
        Literal["json", "html"] | None,
        Query(description="`html`: a printable page (also chosen by `Accept: text/html`)."),
    ] = None,
) -> AccessReport | HTMLResponse:
    """Who accessed the customer's data — by store and role, never by name — when, why, which
    field groups, and whether it was allowed (manager, purpose `subject_request`)."""
    result = await report.access_report(uow, runtime, ctx, customer_id, since=since, until=until)
    wants_html = format == "html" or (
        format is None and "text/html" in request.headers.get("accept", "")
    )
    if not wants_html:
        return result
    names = await report.store_names(uow)
    return HTMLResponse(report.render_html(result, names))
