"""The register of customers' requests: always by store, except the auditor's view of all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.pagination import PageRequest, newest_first
from app.models import Store, SubjectRequest


@dataclass(frozen=True, slots=True)
class RequestFilter:
    store_id: str | None  # None: every store (auditors)
    open: bool | None
    overdue_on: date | None  # open and due before this day


async def add(session: AsyncSession, request: SubjectRequest) -> None:
    session.add(request)
    await session.flush()


async def listed(
    session: AsyncSession, where: RequestFilter, page: PageRequest
) -> Sequence[tuple[SubjectRequest, str]]:
    statement = select(SubjectRequest, Store.code).join(Store, Store.id == SubjectRequest.store_id)
    if where.store_id is not None:
        statement = statement.where(SubjectRequest.store_id == where.store_id)
    if where.open is not None:
        statement = statement.where(SubjectRequest.status == ("open" if where.open else "closed"))
    if where.overdue_on is not None:
        statement = statement.where(
            SubjectRequest.status == "open", SubjectRequest.due_on < where.overdue_on
        )
    statement = newest_first(statement, SubjectRequest.received_at, SubjectRequest.id, page)
    return [(request, code) for request, code in (await session.execute(statement)).all()]


async def in_store(
    session: AsyncSession, request_id: str, store_id: str | None
) -> tuple[SubjectRequest, str] | None:
    statement = (
        select(SubjectRequest, Store.code)
        .join(Store, Store.id == SubjectRequest.store_id)
        .where(SubjectRequest.id == request_id, SubjectRequest.store_id == store_id)
        .with_for_update(of=SubjectRequest)
    )
    row = (await session.execute(statement)).one_or_none()
    return None if row is None else (row[0], row[1])


async def flush(session: AsyncSession) -> None:
    await session.flush()
