"""Contract queries."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Contract


async def customer_of(session: AsyncSession, contract_id: str) -> str | None:
    """The id of the customer a contract belongs to."""
    statement = select(Contract.customer_id).where(Contract.id == contract_id)
    return (await session.execute(statement)).scalar_one_or_none()


async def by_id(session: AsyncSession, contract_id: str, *, lock: bool = False) -> Contract | None:
    """``lock`` holds the row until commit, so two terminations see each other's result."""
    statement = select(Contract).where(Contract.id == contract_id)
    if lock:
        statement = statement.with_for_update()
    return (await session.execute(statement)).scalar_one_or_none()


async def add(session: AsyncSession, contract: Contract) -> None:
    session.add(contract)
    await session.flush()


async def flush(session: AsyncSession) -> None:
    await session.flush()
