"""Customer queries beyond the access query (``app/access/repository.py``): the rows a view
needs, and search through the blind indexes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.access.repository import wrapped_key
from app.crypto import KeyScope
from app.models import ConsentEvent, Contract, Customer, CustomerKey, Store, Visit
from app.models.base import utcnow


async def contracts_of(session: AsyncSession, customer_id: str) -> Sequence[Contract]:
    statement = (
        select(Contract)
        .where(Contract.customer_id == customer_id)
        .order_by(Contract.started_on.desc(), Contract.created_at.desc())
    )
    return (await session.execute(statement)).scalars().all()


async def visits_of(session: AsyncSession, customer_id: str) -> Sequence[tuple[Visit, str]]:
    statement = (
        select(Visit, Store.code)
        .join(Store, Store.id == Visit.store_id)
        .where(Visit.customer_id == customer_id)
        .order_by(Visit.opened_at.desc())
    )
    return [(visit, code) for visit, code in (await session.execute(statement)).all()]


async def search_names(
    session: AsyncSession,
    column: InstrumentedAttribute[Any],
    digest: str,
    states: Sequence[str],
    limit: int,
) -> Sequence[tuple[str, bytes, bytes | None]]:
    """Matching customers' ids, encrypted names and wrapped identity keys."""
    statement = (
        select(Customer.id, Customer.name_enc, wrapped_key(KeyScope.IDENTITY))
        .where(column == digest, Customer.state.in_(states))
        .order_by(Customer.created_at.desc(), Customer.id)
        .limit(limit)
    )
    return [(row[0], row[1], row[2]) for row in (await session.execute(statement)).all()]


async def add_customer(
    session: AsyncSession,
    customer: Customer,
    keys: Sequence[CustomerKey],
    consents: Sequence[ConsentEvent],
) -> None:
    session.add(customer)
    await session.flush()
    session.add_all([*keys, *consents])


def add_consent_event(session: AsyncSession, event: ConsentEvent) -> None:
    session.add(event)


async def attach_to_open_visit(
    session: AsyncSession, visit_id: str, customer_id: str, presence_method: str
) -> bool:
    """Attach the customer to the visit if it has none yet; False if one was attached first."""
    attached = await session.execute(
        update(Visit)
        .where(Visit.id == visit_id, Visit.customer_id.is_(None))
        .values(customer_id=customer_id, presence_at=utcnow(), presence_method=presence_method)
    )
    return bool(attached.rowcount == 1)  # type: ignore[attr-defined]


async def flush(session: AsyncSession) -> None:
    await session.flush()
