"""What retention is computed from: a customer's contracts and consents, and their forms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import among
from app.models import ConsentEvent, Contract, Customer, Message, PaperForm, Visit


async def contract_summary(session: AsyncSession, customer_id: str) -> tuple[int, date | None]:
    """(how many contracts are active, the day the last one ended)."""
    statement = select(
        func.count().filter(Contract.status == "active"), func.max(Contract.ended_on)
    ).where(Contract.customer_id == customer_id)
    active, last_end = (await session.execute(statement)).one()
    return int(active or 0), last_end


async def consent_summary(session: AsyncSession, customer_id: str) -> tuple[bool, datetime | None]:
    """(is a marketing consent granted now, when one was last withdrawn)."""
    granted = (
        await session.execute(
            select(Customer.marketing_email, Customer.marketing_sms).where(
                Customer.id == customer_id
            )
        )
    ).one_or_none()
    withdrawn = (
        await session.execute(
            select(func.max(ConsentEvent.at)).where(
                ConsentEvent.customer_id == customer_id, ConsentEvent.granted.is_(False)
            )
        )
    ).scalar_one_or_none()
    return bool(granted and any(granted)), withdrawn


async def kept_forms(
    session: AsyncSession, customer_id: str
) -> Sequence[tuple[PaperForm, datetime]]:
    """The customer's forms not disposed of yet, each with when its visit was."""
    statement = (
        select(PaperForm, Visit.opened_at)
        .join(Visit, Visit.id == PaperForm.visit_id)
        .where(PaperForm.customer_id == customer_id, PaperForm.disposed_at.is_(None))
        .with_for_update(of=PaperForm)
    )
    return [(form, opened_at) for form, opened_at in (await session.execute(statement)).all()]


async def flush(session: AsyncSession) -> None:
    await session.flush()


# --- disposal by schedule (shopvault purge) -----------------------------------------------------


async def customers_past(session: AsyncSession, before: datetime, now: datetime) -> list[str]:
    """Customers (not erased) with no active contract, no contract ended and no visit since
    ``before``, registered before it, and no open visit: candidates for disposal (the rule is
    checked exactly per customer)."""
    open_visit = (
        select(Visit.id)
        .where(
            Visit.customer_id == Customer.id,
            Visit.closed_at.is_(None),
            or_(Visit.auto_close_at.is_(None), Visit.auto_close_at > now),
        )
        .exists()
    )
    recent_visit = (
        select(Visit.id).where(Visit.customer_id == Customer.id, Visit.opened_at >= before).exists()
    )
    live_contract = (
        select(Contract.id)
        .where(
            Contract.customer_id == Customer.id,
            or_(Contract.status == "active", Contract.ended_on >= before.date()),
        )
        .exists()
    )
    statement = (
        select(Customer.id)
        .where(
            Customer.state.in_(("active", "suspended")),
            Customer.created_at < before,
            ~open_visit,
            ~recent_visit,
            ~live_contract,
        )
        .order_by(Customer.created_at, Customer.id)
    )
    return list((await session.execute(statement)).scalars())


@dataclass(frozen=True, slots=True)
class DisposalFacts:
    """What the customer rule looks at, for one customer."""

    state: str
    last_activity: datetime  # registration or last visit
    open_visit: bool
    active_contracts: int
    last_contract_end: date | None


async def disposal_facts(
    session: AsyncSession, customer_ids: Sequence[str], now: datetime
) -> dict[str, DisposalFacts]:
    """Each customer's facts, their rows locked (in id order) for the disposal that follows."""
    ids = sorted(customer_ids)
    rows = (
        await session.execute(
            select(Customer.id, Customer.state, Customer.created_at)
            .where(among(session, Customer.id, ids))
            .order_by(Customer.id)
            .with_for_update()
        )
    ).all()
    last_visits = await session.execute(
        select(Visit.customer_id, func.max(Visit.opened_at))
        .where(among(session, Visit.customer_id, ids))
        .group_by(Visit.customer_id)
    )
    last_visit: dict[str | None, datetime] = {cid: at for cid, at in last_visits.all()}
    open_visits = await session.execute(
        select(Visit.customer_id)
        .where(
            among(session, Visit.customer_id, ids),
            Visit.closed_at.is_(None),
            or_(Visit.auto_close_at.is_(None), Visit.auto_close_at > now),
        )
        .distinct()
    )
    open_visit = set(open_visits.scalars())
    summaries = await session.execute(
        select(
            Contract.customer_id,
            func.count().filter(Contract.status == "active"),
            func.max(Contract.ended_on),
        )
        .where(among(session, Contract.customer_id, ids))
        .group_by(Contract.customer_id)
    )
    contracts = {cid: (int(active or 0), end) for cid, active, end in summaries.all()}
    facts = {}
    for customer_id, state, created in rows:
        visited = last_visit.get(customer_id)
        active, last_end = contracts.get(customer_id, (0, None))
        facts[customer_id] = DisposalFacts(
            state=state,
            last_activity=max(created, visited) if visited else created,
            open_visit=customer_id in open_visit,
            active_contracts=active,
            last_contract_end=last_end,
        )
    return facts


async def lock_identity_records(
    session: AsyncSession, customer_ids: Sequence[str]
) -> list[tuple[str, str, date | None]]:
    """(id, state, kept until) of each customer, rows locked in id order."""
    rows = await session.execute(
        select(Customer.id, Customer.state, Customer.identity_retain_until)
        .where(among(session, Customer.id, sorted(customer_ids)))
        .order_by(Customer.id)
        .with_for_update()
    )
    return [(cid, state, until) for cid, state, until in rows.all()]


async def identity_records_past(session: AsyncSession, today: date) -> list[str]:
    """Erased customers whose identity-verification record is kept no longer."""
    statement = (
        select(Customer.id)
        .where(
            Customer.state == "erased",
            Customer.identity_retain_until.is_not(None),
            Customer.identity_retain_until < today,
        )
        .order_by(Customer.id)
    )
    return list((await session.execute(statement)).scalars())


def _visit_end() -> ColumnElement[datetime | None]:
    return func.coalesce(Visit.closed_at, Visit.auto_close_at)


async def visit_notes_past(
    session: AsyncSession, before: datetime, now: datetime
) -> Sequence[tuple[str, str | None, datetime]]:
    """Ended visits (before ``before``) that still hold notes or a symptom: (id, customer, end)."""
    end = _visit_end()
    statement = (
        select(Visit.id, Visit.customer_id, end)
        .where(
            or_(Visit.notes_enc.is_not(None), Visit.repair_symptom_enc.is_not(None)),
            end < before,
            end <= now,
        )
        .order_by(end, Visit.id)
    )
    rows = (await session.execute(statement)).all()
    return [(vid, cid, at) for vid, cid, at in rows if at is not None]


async def clear_visit_notes(session: AsyncSession, visit_ids: Sequence[str]) -> None:
    await session.execute(
        update(Visit)
        .where(among(session, Visit.id, visit_ids))
        .values(notes_enc=None, repair_symptom_enc=None)
    )


async def messages_past(
    session: AsyncSession, before: datetime
) -> Sequence[tuple[str, str, datetime]]:
    """Sent or failed messages made before ``before``: (id, customer, made)."""
    statement = (
        select(Message.id, Message.customer_id, Message.created_at)
        .where(Message.status.in_(("sent", "failed")), Message.created_at < before)
        .order_by(Message.created_at, Message.id)
    )
    return [(mid, cid, at) for mid, cid, at in (await session.execute(statement)).all()]


async def delete_messages(session: AsyncSession, message_ids: Sequence[str]) -> None:
    await session.execute(delete(Message).where(among(session, Message.id, message_ids)))
