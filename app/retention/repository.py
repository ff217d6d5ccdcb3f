"""What retention is computed from: a customer's contracts and consents, and their forms."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ConsentEvent, Contract, Customer, PaperForm, Visit


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
