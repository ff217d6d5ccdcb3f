"""What a proof of presence reads and writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Customer, Visit


@dataclass(frozen=True, slots=True)
class ProofRow:
    id: str
    state: str
    salt: bytes | None
    pin_hash: str | None
    document_hash: str | None


async def proof_row(session: AsyncSession, customer_id: str) -> ProofRow | None:
    row = (
        await session.execute(
            select(
                Customer.id,
                Customer.state,
                Customer.proof_salt,
                Customer.pin_hash,
                Customer.document_hash,
            ).where(Customer.id == customer_id)
        )
    ).one_or_none()
    return None if row is None else ProofRow(*row)


async def set_pin(session: AsyncSession, customer_id: str, salt: bytes, pin_hash: str) -> None:
    await session.execute(
        update(Customer)
        .where(Customer.id == customer_id)
        .values(proof_salt=salt, pin_hash=pin_hash)
    )


async def visit_presence(session: AsyncSession, visit_id: str) -> str | None:
    """How presence was last proven in this visit, if it was."""
    statement = select(Visit.presence_method).where(Visit.id == visit_id)
    return (await session.execute(statement)).scalar_one_or_none()


def mark_present(visit: Visit, method: str, now: datetime) -> None:
    visit.presence_at = now
    visit.presence_method = method
