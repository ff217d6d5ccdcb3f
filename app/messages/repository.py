"""Message, outbox and presence-code queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Boolean,
    ScalarSelect,
    String,
    case,
    column,
    func,
    literal,
    or_,
    select,
    update,
    values,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import KeyScope
from app.kit.pagination import PageRequest, newest_first
from app.models import ConsentEvent, Customer, CustomerKey, Message, PresenceCode, Visit

KIND_MESSAGE = "message"
KIND_PRESENCE_CODE = "presence_code"
PENDING = ("queued", "scheduled")


# --- sending ------------------------------------------------------------------------------------


async def visit_of_customer_at_store(
    session: AsyncSession, visit_id: str, store_id: str | None, customer_id: str
) -> Visit | None:
    if store_id is None:
        return None
    statement = select(Visit).where(
        Visit.id == visit_id, Visit.store_id == store_id, Visit.customer_id == customer_id
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def lock_customer(session: AsyncSession, customer_id: str) -> None:
    """Hold the customer's row until commit, so that concurrent sends count each other against
    the daily cap (PostgreSQL; SQLite transactions are serialised already)."""
    await session.execute(select(Customer.id).where(Customer.id == customer_id).with_for_update())


async def capped_since(
    session: AsyncSession, customer_id: str, since: datetime
) -> Sequence[datetime]:
    """Creation times of the customer's non-urgent messages since ``since``, oldest first."""
    statement = (
        select(Message.created_at)
        .where(
            Message.customer_id == customer_id,
            Message.kind == KIND_MESSAGE,
            Message.urgent.is_(False),
            Message.created_at > since,
        )
        .order_by(Message.created_at)
    )
    return (await session.execute(statement)).scalars().all()


async def latest_opt_in(session: AsyncSession, customer_id: str, channel: str) -> datetime | None:
    statement = (
        select(ConsentEvent.at)
        .where(
            ConsentEvent.customer_id == customer_id,
            ConsentEvent.channel == channel,
            ConsentEvent.granted.is_(True),
        )
        .order_by(ConsentEvent.at.desc())
        .limit(1)
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def message_by_id(session: AsyncSession, message_id: str) -> Message | None:
    statement = select(Message).where(Message.id == message_id, Message.kind == KIND_MESSAGE)
    return (await session.execute(statement)).scalar_one_or_none()


async def messages_of(
    session: AsyncSession, customer_id: str, page: PageRequest
) -> Sequence[Message]:
    statement = select(Message).where(
        Message.customer_id == customer_id, Message.kind == KIND_MESSAGE
    )
    statement = newest_first(statement, Message.created_at, Message.id, page)
    return (await session.execute(statement)).scalars().all()


async def add(session: AsyncSession, row: Message | PresenceCode) -> None:
    """Insert now: a presence code refers to its message, and a unique clash surfaces here."""
    session.add(row)
    await session.flush()


# --- presence codes -----------------------------------------------------------------------------


async def live_presence_codes(
    session: AsyncSession, customer_id: str, now: datetime
) -> Sequence[PresenceCode]:
    statement = select(PresenceCode).where(
        PresenceCode.customer_id == customer_id,
        PresenceCode.used_at.is_(None),
        PresenceCode.expires_at > now,
    )
    return (await session.execute(statement)).scalars().all()


async def use_presence_code(session: AsyncSession, code_id: str, now: datetime) -> bool:
    """Mark the code used; False if someone used it first (it is single use)."""
    result = await session.execute(
        update(PresenceCode)
        .where(PresenceCode.id == code_id, PresenceCode.used_at.is_(None))
        .values(used_at=now)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


async def retire_presence_codes(session: AsyncSession, customer_id: str, now: datetime) -> None:
    """Once one code has proven presence, the customer's other outstanding codes end too."""
    await session.execute(
        update(PresenceCode)
        .where(PresenceCode.customer_id == customer_id, PresenceCode.used_at.is_(None))
        .values(used_at=now)
    )


# --- the outbox ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed message with what delivering it needs (still encrypted)."""

    message: Message
    customer_state: str | None  # None: the customer is gone
    marketing_email: bool
    marketing_sms: bool
    phone_enc: bytes | None
    email_enc: bytes | None
    profile_key: bytes | None


def _profile_key() -> ScalarSelect[bytes]:
    return (
        select(CustomerKey.wrapped_key)
        .where(
            CustomerKey.customer_id == Customer.id,
            CustomerKey.scope == KeyScope.PROFILE.value,
        )
        .scalar_subquery()
    )


async def claim_due(
    session: AsyncSession, worker: str, now: datetime, until: datetime, limit: int
) -> list[Claimed]:
    """Claim up to ``limit`` due messages for ``worker`` until ``until``.

    On PostgreSQL, ``FOR UPDATE SKIP LOCKED`` lets workers claim side by side without waiting
    for, or taking, each other's rows; a row claimed and committed by another worker fails the
    re-checked condition (its claim has not expired). SQLite has no row locks (SQLAlchemy
    leaves the clause out), but every transaction here begins IMMEDIATE, so claims are
    serialised: the second worker sees the first one's committed claim."""
    due = (
        select(Message.id)
        .where(
            Message.status.in_(PENDING),
            Message.due_at <= now,
            or_(Message.claim_expires_at.is_(None), Message.claim_expires_at <= now),
        )
        .order_by(Message.due_at, Message.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.execute(due)).scalars().all())
    if not ids:
        return []
    await session.execute(
        update(Message)
        .where(Message.id.in_(ids))
        .values(claimed_by=worker, claim_expires_at=until)
        .execution_options(synchronize_session=False)
    )
    statement = (
        select(
            Message,
            Customer.state,
            Customer.marketing_email,
            Customer.marketing_sms,
            Customer.phone_enc,
            Customer.email_enc,
            _profile_key(),
        )
        .outerjoin(Customer, Customer.id == Message.customer_id)
        .where(Message.id.in_(ids))
        .order_by(Message.due_at, Message.id)
        .execution_options(populate_existing=True)
    )
    return [
        Claimed(row[0], row[1], bool(row[2]), bool(row[3]), row[4], row[5], row[6])
        for row in (await session.execute(statement)).all()
    ]


@dataclass(frozen=True, slots=True)
class Finished:
    """A claimed message's state once its delivery was decided: every column the worker may
    change, the unchanged ones as claimed (nothing else writes them while the claim holds)."""

    message_id: str
    status: str
    attempts: int
    due_at: datetime
    sent_at: datetime | None
    failed_at: datetime | None
    failure_reason: str | None
    provider_reference: str | None
    drop_body: bool  # a presence code's text is kept only until it is delivered or failed


_FINISHED_COLUMNS = (
    ("message_id", String()),
    ("status", Message.status.type),
    ("attempts", Message.attempts.type),
    ("due_at", Message.due_at.type),
    ("sent_at", Message.sent_at.type),
    ("failed_at", Message.failed_at.type),
    ("failure_reason", Message.failure_reason.type),
    ("provider_reference", Message.provider_reference.type),
    ("drop_body", Boolean()),
)


async def finish_all(session: AsyncSession, worker: str, finished: Sequence[Finished]) -> set[str]:
    """Record the outcomes of a batch and end their claims, in one statement
    (``WITH o(…) AS (VALUES …) UPDATE message … FROM o``, on PostgreSQL and SQLite alike); the
    ids whose claim was still ``worker``'s (the others were not touched)."""
    if not finished:
        return set()
    # Every value a typed bind (a bare None would make an untyped NULL column on PostgreSQL).
    rows = [
        tuple(literal(getattr(f, name), type_) for name, type_ in _FINISHED_COLUMNS)
        for f in finished
    ]
    outcome = (
        values(*(column(name, type_) for name, type_ in _FINISHED_COLUMNS), name="outcome")
        .data(rows)
        .cte("outcome")
    )
    statement = (
        update(Message)
        .where(Message.id == outcome.c.message_id, Message.claimed_by == worker)
        .values(
            claimed_by=None,
            claim_expires_at=None,
            status=outcome.c.status,
            attempts=outcome.c.attempts,
            due_at=outcome.c.due_at,
            sent_at=outcome.c.sent_at,
            failed_at=outcome.c.failed_at,
            failure_reason=outcome.c.failure_reason,
            provider_reference=outcome.c.provider_reference,
            body_enc=case((outcome.c.drop_body, None), else_=Message.body_enc),
        )
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    )
    return set((await session.execute(statement)).scalars().all())


async def release(session: AsyncSession, message_ids: Sequence[str], worker: str) -> None:
    """Give claimed messages back untouched (a worker stopping before it got to them)."""
    if not message_ids:
        return
    await session.execute(
        update(Message)
        .where(Message.id.in_(message_ids), Message.claimed_by == worker)
        .values(claimed_by=None, claim_expires_at=None)
        .execution_options(synchronize_session=False)
    )


async def outbox_counts(session: AsyncSession) -> Sequence[tuple[str, str, str, int, int]]:
    """(kind, channel, status, messages, retries) for every combination present."""
    statement = select(
        Message.kind,
        Message.channel,
        Message.status,
        func.count(),
        func.coalesce(func.sum(case((Message.attempts > 1, Message.attempts - 1), else_=0)), 0),
    ).group_by(Message.kind, Message.channel, Message.status)
    return [
        (row[0], row[1], row[2], int(row[3]), int(row[4]))
        for row in (await session.execute(statement)).all()
    ]
