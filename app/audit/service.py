"""The auditor's work: reading the log, verifying it, alerts and reviews — each itself recorded.

Every route here is the auditor's `audit` purpose, with a reason (the policy's row for auditors),
so that who looked at the log, and why, is in the log too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from datetime import datetime
from typing import Any

from app.access.context import AccessContext
from app.access.guard import permit
from app.audit import auditor_repository as repository
from app.audit.alerts import RuleName
from app.audit.auditor_repository import EventFilters, EventRow
from app.audit.events import Action, EventDraft
from app.audit.schemas import (
    AccessEventOut,
    AccessEventPage,
    AlertOut,
    AlertPage,
    ReviewCreate,
    ReviewItem,
    ReviewOut,
    ReviewPage,
    VerificationOut,
)
from app.db import session_factory
from app.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from app.models import AccessReview, Alert
from app.models.base import utcnow
from app.policy import Purpose
from app.runtime import Runtime
from app.uow import UnitOfWork

AUDIT_ONLY = frozenset({Purpose.AUDIT})
MAX_CURSOR_LENGTH = 300


# --- cursors -----------------------------------------------------------------------------------


def encode_cursor(*parts: Any) -> str:
    raw = json.dumps(
        [p.isoformat() if isinstance(p, datetime) else p for p in parts], separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type, ...]) -> tuple[Any, ...]:
    invalid = ValidationFailed("The cursor is not valid; pass the `next` value of a list.")
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise invalid
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(parts, list) or len(parts) != len(shape):
            raise invalid
        values: list[Any] = []
        for part, kind in zip(parts, shape, strict=True):
            if kind is datetime:
                value = datetime.fromisoformat(part)
                if value.tzinfo is None:
                    raise invalid
                values.append(value)
            elif not isinstance(part, kind) or isinstance(part, bool):
                raise invalid
            else:
                values.append(part)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid from exc
    return tuple(values)


# --- shaping -----------------------------------------------------------------------------------


def event_out(row: EventRow) -> AccessEventOut:
    event = row.event
    return AccessEventOut(
        id=event.id,
        at=event.at,
        actor=event.actor,
        role=event.role,
        store=event.store,
        terminal=event.terminal,
        purpose=event.purpose,
        reason=event.reason,
        action=event.action,
        resource=event.resource,
        customer_ids=row.customer_ids,
        fields=list(event.fields),
        changed_fields=event.changed_fields,
        result_count=event.result_count,
        outcome=event.outcome,
        review_required=event.review_required,
        presence_method=event.presence_method,
        subject_request_id=event.subject_request_id,
        count=event.count,
        request_id=event.request_id,
        chain=event.chain,
        seq=event.seq,
        hash=event.hash,
        prev_hash=event.prev_hash,
    )


def alert_out(alert: Alert) -> AlertOut:
    return AlertOut.model_validate(alert, from_attributes=True)


def review_out(review: AccessReview) -> ReviewOut:
    return ReviewOut.model_validate(review, from_attributes=True)


def _recorded(
    ctx: AccessContext,
    action: Action,
    resource: str,
    *,
    customer_ids: tuple[str, ...] = (),
    changed_fields: tuple[str, ...] | None = None,
) -> EventDraft:
    return EventDraft(
        actor=ctx.actor,
        action=action,
        resource=resource,
        purpose=ctx.purpose.value,
        reason=ctx.reason,
        customer_ids=customer_ids,
        changed_fields=changed_fields,
    )


def _permit(ctx: AccessContext, action: Action, resource: str) -> None:
    """Only an auditor, for `audit`, with a reason (the policy's row)."""
    permit(ctx, action=action, resource=resource)


# --- the log -----------------------------------------------------------------------------------


async def list_events(
    uow: UnitOfWork, ctx: AccessContext, filters: EventFilters, *, limit: int, cursor: str | None
) -> AccessEventPage:
    resource = "access-events"
    _permit(ctx, Action.READ, resource)
    after = decode_cursor(cursor, (datetime, str)) if cursor is not None else None
    rows = await repository.list_events(
        uow.session,
        filters,
        after=(after[0], after[1]) if after else None,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1].event if rows else None
    # Reading the log is itself an access; a look at one customer's accesses concerns them.
    customer_ids = (filters.customer_id,) if filters.customer_id else ()
    uow.record(_recorded(ctx, Action.READ, resource, customer_ids=customer_ids))
    return AccessEventPage(
        items=[event_out(row) for row in rows],
        next=encode_cursor(last.at, last.id) if more and last else None,
    )


async def verify_log(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, *, full: bool
) -> VerificationOut:
    resource = "access-events/verify"
    _permit(ctx, Action.READ, resource)
    # Before any query of the request's own: on SQLite its transaction holds the write lock,
    # which the verification's checkpoint needs.
    try:
        result = await asyncio.to_thread(runtime.integrity.verify, full=full)
    except OSError as exc:
        raise ServiceUnavailable("The checkpoint file cannot be read or written.") from exc
    uow.record(_recorded(ctx, Action.READ, resource))
    return VerificationOut.model_validate(result.as_dict())


# --- alerts ------------------------------------------------------------------------------------


async def list_alerts(
    uow: UnitOfWork,
    ctx: AccessContext,
    *,
    status: str | None,
    rule: str | None,
    store: str | None,
    limit: int,
    cursor: str | None,
) -> AlertPage:
    resource = "alerts"
    _permit(ctx, Action.READ, resource)
    after = decode_cursor(cursor, (datetime, str)) if cursor is not None else None
    alerts = await repository.list_alerts(
        uow.session,
        status=status,
        rule=rule,
        store=store,
        after=(after[0], after[1]) if after else None,
        limit=limit + 1,
    )
    more = len(alerts) > limit
    alerts = alerts[:limit]
    uow.record(_recorded(ctx, Action.READ, resource))
    last = alerts[-1] if alerts else None
    return AlertPage(
        items=[alert_out(alert) for alert in alerts],
        next=encode_cursor(last.last_at, last.id) if more and last else None,
    )


async def resolve_alert(uow: UnitOfWork, ctx: AccessContext, alert_id: str, note: str) -> AlertOut:
    resource = f"alerts/{alert_id}"
    _permit(ctx, Action.UPDATE, resource)
    alert = await repository.alert_for_update(uow.session, alert_id)
    if alert is None:
        raise NotFound("No such alert.")
    if alert.status != "open":
        raise Conflict("The alert is resolved already.")
    alert.status = "resolved"
    alert.resolved_at = utcnow()
    alert.resolved_by = ctx.principal.login
    alert.note = note
    await uow.session.flush()
    uow.record(_recorded(ctx, Action.UPDATE, resource, changed_fields=("note", "status")))
    return alert_out(alert)


async def open_alerts_by_rule(runtime: Runtime) -> dict[str, int]:
    """For the metrics: open alerts per rule (every rule named, zero included)."""
    async with session_factory(runtime.read_engine)() as session:
        counts = await repository.open_alert_counts(session)
    return {rule.value: counts.get(rule.value, 0) for rule in RuleName}


# --- reviews -----------------------------------------------------------------------------------


async def list_reviews(
    uow: UnitOfWork,
    ctx: AccessContext,
    *,
    pending: bool | None,
    limit: int,
    cursor: str | None,
) -> ReviewPage:
    resource = "reviews"
    _permit(ctx, Action.READ, resource)
    after = decode_cursor(cursor, (int, datetime, str)) if cursor is not None else None
    rows = await repository.list_reviews(
        uow.session,
        pending=pending,
        after=(after[0], after[1], after[2]) if after else None,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    uow.record(_recorded(ctx, Action.READ, resource))
    next_cursor = None
    if more and rows:
        event, review = rows[-1]
        next_cursor = encode_cursor(int(review is not None), event.event.at, event.event.id)
    return ReviewPage(
        items=[
            ReviewItem(event=event_out(event), review=review_out(review) if review else None)
            for event, review in rows
        ],
        next=next_cursor,
    )


async def review_access(
    uow: UnitOfWork, ctx: AccessContext, event_id: str, body: ReviewCreate
) -> ReviewOut:
    resource = f"reviews/{event_id}"
    _permit(ctx, Action.CREATE, resource)
    row = await repository.event_by_id(uow.session, event_id)
    if row is None or not row.event.review_required:
        raise NotFound("No access awaiting review has this id.")
    review = AccessReview(
        event_id=row.event.id,
        decision=body.decision,
        note=body.note,
        reviewed_by=ctx.principal.login,
        reviewed_by_id=ctx.principal.subject,
        reviewed_at=utcnow(),
    )
    if not await repository.add_review(uow.session, review):
        raise Conflict("This access has been reviewed already.")
    uow.record(_recorded(ctx, Action.CREATE, resource, customer_ids=tuple(row.customer_ids)))
    return review_out(review)
