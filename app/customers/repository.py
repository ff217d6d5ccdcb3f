"""Customer queries. The access query checks the caller's token, the visit and loads the customer
with its wrapped keys in one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.auth.repository import principal_is_current
from app.auth.tokens import Principal
from app.crypto import KeyScope
from app.models import Contract, Customer, CustomerKey, Store, Visit


def visit_is_open(now: datetime) -> ColumnElement[bool]:
    return and_(
        Visit.closed_at.is_(None),
        or_(Visit.auto_close_at.is_(None), Visit.auto_close_at > now),
    )


def visit_justifies(
    visit_id: str | None,
    *,
    customer_id: str | None,
    store_id: str | None,
    repair_only: bool,
    now: datetime,
) -> ColumnElement[bool]:
    """An open visit, at the caller's store, for this customer (None: for no customer yet)."""
    if visit_id is None or store_id is None:
        return false()
    conditions = [
        Visit.id == visit_id,
        Visit.store_id == store_id,
        visit_is_open(now),
        Visit.customer_id.is_(None) if customer_id is None else Visit.customer_id == customer_id,
    ]
    if repair_only:
        conditions.append(Visit.type == "repair")
    return exists().where(*conditions)


def _wrapped_key(scope: KeyScope) -> ColumnElement[bytes | None]:
    return (
        select(CustomerKey.wrapped_key)
        .where(CustomerKey.customer_id == Customer.id, CustomerKey.scope == scope.value)
        .scalar_subquery()
    )


@dataclass(frozen=True, slots=True)
class AccessRow:
    principal_ok: bool
    visit_ok: bool
    customer: Customer | None
    identity_key: bytes | None
    profile_key: bytes | None
    verified_store: str | None


async def load_for_access(
    session: AsyncSession,
    principal: Principal,
    customer_id: str,
    *,
    visit_check: ColumnElement[bool],
) -> AccessRow:
    one = select(literal(1).label("one")).subquery("one")
    verified_store = (
        select(Store.code).where(Store.id == Customer.document_verified_store_id).scalar_subquery()
    )
    statement = (
        select(
            principal_is_current(principal).label("principal_ok"),
            visit_check.label("visit_ok"),
            Customer,
            _wrapped_key(KeyScope.IDENTITY),
            _wrapped_key(KeyScope.PROFILE),
            verified_store,
        )
        .select_from(one)
        .outerjoin(Customer, Customer.id == customer_id)
    )
    row = (await session.execute(statement)).one()
    return AccessRow(
        principal_ok=bool(row[0]),
        visit_ok=bool(row[1]),
        customer=row[2],
        identity_key=row[3],
        profile_key=row[4],
        verified_store=row[5],
    )


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
        select(Customer.id, Customer.name_enc, _wrapped_key(KeyScope.IDENTITY))
        .where(column == digest, Customer.state.in_(states))
        .order_by(Customer.created_at.desc(), Customer.id)
        .limit(limit)
    )
    return [(row[0], row[1], row[2]) for row in (await session.execute(statement)).all()]


async def contract_by_id(session: AsyncSession, contract_id: str) -> Contract | None:
    return await session.get(Contract, contract_id)
