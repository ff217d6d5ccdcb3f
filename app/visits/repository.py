"""Visit queries, always scoped to one store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.repository import visit_is_open
from app.kit.pagination import PageRequest, newest_first
from app.models import RepairStatusChange, ServiceKey, Staff, Store, Visit
from app.visits.rules import VisitType


async def in_store(
    session: AsyncSession, visit_id: str, store_id: str, *, lock: bool = False
) -> tuple[Visit, str] | None:
    """The visit, if it is at this store. ``lock`` holds its row until commit (PostgreSQL; SQLite
    has one writer anyway), so concurrent changes see each other's result: attach once, forward
    only."""
    statement = (
        select(Visit, Store.code)
        .join(Store, Store.id == Visit.store_id)
        .where(Visit.id == visit_id, Visit.store_id == store_id)
    )
    if lock:
        statement = statement.with_for_update(of=Visit)
    row = (await session.execute(statement)).one_or_none()
    return (row[0], row[1]) if row else None


async def close_expired(session: AsyncSession, store_id: str, now: datetime) -> None:
    """Give visits that closed themselves their real ``closed_at``."""
    await session.execute(
        update(Visit)
        .where(
            Visit.store_id == store_id,
            Visit.closed_at.is_(None),
            Visit.auto_close_at.is_not(None),
            Visit.auto_close_at <= now,
        )
        .values(closed_at=Visit.auto_close_at)
    )


async def open_in_store(
    session: AsyncSession, store_id: str, now: datetime, page: PageRequest
) -> Sequence[tuple[Visit, str]]:
    statement = (
        select(Visit, Store.code)
        .join(Store, Store.id == Visit.store_id)
        .where(Visit.store_id == store_id, visit_is_open(now))
    )
    statement = newest_first(statement, Visit.opened_at, Visit.id, page)
    return [(v, code) for v, code in (await session.execute(statement)).all()]


async def stale_repairs_in_store(
    session: AsyncSession, store_id: str, changed_before: datetime, page: PageRequest
) -> Sequence[tuple[Visit, str]]:
    """The store's open repair visits whose status last changed before ``changed_before``."""
    statement = (
        select(Visit, Store.code)
        .join(Store, Store.id == Visit.store_id)
        .where(
            Visit.store_id == store_id,
            Visit.type == VisitType.REPAIR.value,
            Visit.closed_at.is_(None),
            Visit.repair_updated_at < changed_before,
        )
    )
    statement = newest_first(statement, Visit.opened_at, Visit.id, page)
    return [(v, code) for v, code in (await session.execute(statement)).all()]


def add_status_change(session: AsyncSession, change: RepairStatusChange) -> None:
    session.add(change)


async def repair_history(
    session: AsyncSession, visit_id: str
) -> Sequence[tuple[str, datetime, str | None]]:
    """Each status the repair reached: (status, when, the login of who moved it), oldest first."""
    statement = (
        select(RepairStatusChange.status, RepairStatusChange.changed_at, Staff.login)
        .outerjoin(Staff, Staff.id == RepairStatusChange.changed_by)
        .where(RepairStatusChange.visit_id == visit_id)
        .order_by(RepairStatusChange.changed_at, RepairStatusChange.id)
    )
    return [(status, at, login) for status, at, login in (await session.execute(statement)).all()]


async def add(session: AsyncSession, visit: Visit) -> None:
    session.add(visit)
    await session.flush()


async def flush(session: AsyncSession) -> None:
    await session.flush()


async def close(session: AsyncSession, visit_id: str, now: datetime) -> bool:
    """Close the visit unless someone closed it first."""
    result = await session.execute(
        update(Visit).where(Visit.id == visit_id, Visit.closed_at.is_(None)).values(closed_at=now)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def service_key(session: AsyncSession, name: str) -> ServiceKey | None:
    return await session.get(ServiceKey, name)


async def add_service_key_if_absent(session: AsyncSession, row: ServiceKey) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(
        insert(ServiceKey)
        .values(
            name=row.name,
            wrapped_key=row.wrapped_key,
            master_key_id=row.master_key_id,
            created_at=row.created_at or datetime.now().astimezone(),
        )
        .on_conflict_do_nothing()
    )
