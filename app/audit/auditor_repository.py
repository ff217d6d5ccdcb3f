"""What auditors read and add: access events, alerts, reviews, a customer's access report, and
the counts the alert rules measure. The access log itself is written only by
``app/audit/repository.py``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AccessEvent, AccessEventCustomer, AccessReview, Alert, Store
from app.models.base import UTCDateTime, new_id

if TYPE_CHECKING:
    from app.audit.alerts import AlertRule

E, L = AccessEvent, AccessEventCustomer


@dataclass(frozen=True, slots=True)
class EventRow:
    event: AccessEvent
    customer_ids: list[str]


@dataclass(frozen=True, slots=True)
class EventFilters:
    customer_id: str | None = None
    actor: str | None = None
    store: str | None = None
    purpose: str | None = None
    outcome: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive


def _newer_first_after(at: datetime, event_id: str) -> ColumnElement[bool]:
    return or_(E.at < at, and_(E.at == at, E.id < event_id))


async def _with_customers(session: AsyncSession, events: Sequence[AccessEvent]) -> list[EventRow]:
    if not events:
        return []
    links: dict[str, list[str]] = defaultdict(list)
    rows = await session.execute(
        select(L.event_id, L.customer_id)
        .where(L.event_id.in_([e.id for e in events]))
        .order_by(L.event_id, L.position)
    )
    for event_id, customer_id in rows:
        links[event_id].append(customer_id)
    return [EventRow(event, links.get(event.id, [])) for event in events]


async def list_events(
    session: AsyncSession, filters: EventFilters, *, after: tuple[datetime, str] | None, limit: int
) -> list[EventRow]:
    """Newest first, ``limit`` events after the cursor position (``at``, ``id``)."""
    statement = select(E)
    if filters.customer_id is not None:
        statement = statement.where(
            E.id.in_(select(L.event_id).where(L.customer_id == filters.customer_id))
        )
    for column, value in (
        (E.actor, filters.actor),
        (E.store, filters.store),
        (E.purpose, filters.purpose),
        (E.outcome, filters.outcome),
    ):
        if value is not None:
            statement = statement.where(column == value)
    if filters.since is not None:
        statement = statement.where(E.at >= filters.since)
    if filters.until is not None:
        statement = statement.where(E.at < filters.until)
    if after is not None:
        statement = statement.where(_newer_first_after(*after))
    events = (
        await session.scalars(statement.order_by(E.at.desc(), E.id.desc()).limit(limit))
    ).all()
    return await _with_customers(session, events)


async def events_for_export(
    session: AsyncSession, *, after: tuple[datetime, str] | None, until: datetime, limit: int
) -> list[EventRow]:
    """Oldest first, events up to ``until`` after the cursor position (``at``, ``id``)."""
    statement = select(E).where(E.at <= until)
    if after is not None:
        at, event_id = after
        statement = statement.where(or_(E.at > at, and_(E.at == at, E.id > event_id)))
    events = (await session.scalars(statement.order_by(E.at, E.id).limit(limit))).all()
    return await _with_customers(session, events)


async def event_by_id(session: AsyncSession, event_id: str) -> EventRow | None:
    event = await session.get(E, event_id)
    if event is None:
        return None
    return (await _with_customers(session, [event]))[0]


async def customer_access(
    session: AsyncSession, customer_id: str, *, since: datetime | None, until: datetime | None
) -> list[AccessEvent]:
    """Every event concerning this customer in the period, oldest first."""
    statement = select(E).where(E.id.in_(select(L.event_id).where(L.customer_id == customer_id)))
    if since is not None:
        statement = statement.where(E.at >= since)
    if until is not None:
        statement = statement.where(E.at < until)
    return list((await session.scalars(statement.order_by(E.at, E.id))).all())


async def stores(session: AsyncSession) -> dict[str, Store]:
    return {store.code: store for store in (await session.scalars(select(Store))).all()}


async def store_by_id(session: AsyncSession, store_id: str | None) -> Store | None:
    return None if store_id is None else await session.get(Store, store_id)


async def store_hours(session: AsyncSession) -> dict[str, tuple[str, str]]:
    rows = await session.execute(select(Store.code, Store.opens_at, Store.closes_at))
    return {code: (opens, closes) for code, opens, closes in rows}


def _dialect(session: AsyncSession) -> str:
    bind = session.bind
    assert bind is not None
    return bind.dialect.name


# --- what the alert rules measure ---------------------------------------------------------------


def _rule_conditions(rule: AlertRule) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    condition = rule.filter
    if condition.actions is not None:
        conditions.append(E.action.in_(sorted(condition.actions)))
    if condition.outcome is not None:
        conditions.append(E.outcome == condition.outcome)
    if condition.denials is not None:
        conditions.append(E.denial.in_(sorted(condition.denials)))
    if condition.result_count_zero:
        conditions.append(E.result_count == 0)
    if condition.review_required:
        conditions.append(E.review_required.is_(True))
    if condition.privileged or condition.off_hours:
        raise ValueError("this condition is evaluated per event, not counted")
    return conditions


async def measure(
    session: AsyncSession,
    *,
    rule: AlertRule,
    keys: Sequence[str],
    since: datetime,
    until: datetime,
) -> dict[str, int]:
    """Per key (caller, or customer), the rule's measure over events in (since, until]."""
    from app.audit.alerts import Measure, Scope

    conditions = [*_rule_conditions(rule), E.at > since, E.at <= until]
    statement: Any
    key: Any
    if rule.scope is Scope.CUSTOMER:
        key = L.customer_id
        statement = select(key, func.sum(func.coalesce(E.count, 1))).join(
            L, and_(L.event_id == E.id, L.position == 0)
        )
        conditions.append(L.customer_id.in_(keys))
    else:
        key = func.coalesce(E.actor, "")
        named = [k for k in keys if k]
        by_actor = [E.actor.in_(named)] if named else []
        if "" in keys:
            by_actor.append(E.actor.is_(None))
        conditions.append(or_(*by_actor))
        if rule.measure is Measure.DISTINCT_CUSTOMERS:
            statement = select(key, func.count(L.customer_id.distinct())).join(
                L, L.event_id == E.id
            )
        else:
            statement = select(key, func.sum(func.coalesce(E.count, 1)))
    rows = await session.execute(statement.select_from(E).where(*conditions).group_by(key))
    return {str(k): int(value or 0) for k, value in rows}


# --- alerts ------------------------------------------------------------------------------------


async def upsert_alert(
    session: AsyncSession,
    *,
    rule: str,
    actor: str | None,
    actor_key: str,
    role: str | None,
    store: str | None,
    subject: str,
    window_start: datetime,
    at: datetime,
    opening_count: int,
    growth: int,
    first_at: datetime | None = None,
) -> Alert | None:
    """Open an alert, or make the open one of this rule, actor, subject and window grow. The
    alert if it was opened now. ``at``: the newest event's time; ``first_at``: the oldest's,
    when the growth stands for several."""
    same = (
        Alert.rule == rule,
        Alert.actor_key == actor_key,
        Alert.subject == subject,
        Alert.window_start == window_start,
        Alert.status == "open",
    )

    async def grow() -> bool:
        result = await session.execute(
            update(Alert)
            .where(*same)
            .values(
                count=Alert.count + growth,
                last_at=func.max(Alert.last_at, literal(at, UTCDateTime()))
                if _dialect(session) == "sqlite"
                else func.greatest(Alert.last_at, literal(at, UTCDateTime())),
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    if await grow():
        return None
    alert = Alert(
        id=new_id(),
        rule=rule,
        actor=actor,
        actor_key=actor_key,
        role=role,
        store=store,
        subject=subject,
        window_start=window_start,
        status="open",
        first_at=first_at or at,
        last_at=at,
        count=opening_count,
    )
    try:
        async with session.begin_nested():
            session.add(alert)
    except IntegrityError:  # opened by another process just now
        await grow()
        return None
    return alert


async def list_alerts(
    session: AsyncSession,
    *,
    status: str | None,
    rule: str | None,
    store: str | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Alert]:
    statement = select(Alert)
    if status is not None:
        statement = statement.where(Alert.status == status)
    if rule is not None:
        statement = statement.where(Alert.rule == rule)
    if store is not None:
        statement = statement.where(Alert.store == store)
    if after is not None:
        at, alert_id = after
        statement = statement.where(
            or_(Alert.last_at < at, and_(Alert.last_at == at, Alert.id < alert_id))
        )
    statement = statement.order_by(Alert.last_at.desc(), Alert.id.desc()).limit(limit)
    return list((await session.scalars(statement)).all())


async def alert_for_update(session: AsyncSession, alert_id: str) -> Alert | None:
    statement = select(Alert).where(Alert.id == alert_id)
    if _dialect(session) == "postgresql":
        statement = statement.with_for_update()
    return (await session.scalars(statement)).one_or_none()


async def open_alert_counts(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(Alert.rule, func.count()).where(Alert.status == "open").group_by(Alert.rule)
    )
    return {rule: int(count) for rule, count in rows}


# --- reviews -----------------------------------------------------------------------------------


async def list_reviews(
    session: AsyncSession,
    *,
    pending: bool | None,
    after: tuple[int, datetime, str] | None,
    limit: int,
) -> list[tuple[EventRow, AccessReview | None]]:
    """Accesses queued for review: pending ones first, then newest first."""
    reviewed = func.coalesce(
        select(1).where(AccessReview.event_id == E.id).correlate(E).scalar_subquery(), 0
    )
    statement = (
        select(E, AccessReview)
        .outerjoin(AccessReview, AccessReview.event_id == E.id)
        .where(E.review_required.is_(True))
    )
    if pending is True:
        statement = statement.where(AccessReview.event_id.is_(None))
    elif pending is False:
        statement = statement.where(AccessReview.event_id.is_not(None))
    if after is not None:
        done, at, event_id = after
        statement = statement.where(
            or_(
                reviewed > done,
                and_(reviewed == done, _newer_first_after(at, event_id)),
            )
        )
    statement = statement.order_by(reviewed, E.at.desc(), E.id.desc()).limit(limit)
    rows = (await session.execute(statement)).all()
    events = await _with_customers(session, [row[0] for row in rows])
    return [(event, row[1]) for event, row in zip(events, rows, strict=True)]


async def add_review(session: AsyncSession, review: AccessReview) -> bool:
    """False if the access was reviewed already."""
    try:
        async with session.begin_nested():
            session.add(review)
    except IntegrityError:
        return False
    return True
