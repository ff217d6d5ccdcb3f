"""Queries of the administration capability: stores, staff and system clients."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.pagination import Keyset
from app.models import Staff, Store, SystemClient
from app.models.base import Base

Listed = TypeVar("Listed", Store, Staff, SystemClient)


class DuplicateKey(Exception):
    """A unique column already holds the value (a concurrent insert won the race)."""


async def add(session: AsyncSession, row: Base) -> None:
    """Insert now, so that a unique-key clash surfaces here, before anything else is written."""
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise DuplicateKey() from exc


async def store_code_taken(session: AsyncSession, code: str) -> bool:
    return bool(await session.scalar(select(exists().where(Store.code == code))))


async def store_by_code(session: AsyncSession, code: str) -> Store | None:
    return await session.scalar(select(Store).where(Store.code == code))


async def staff_login_taken(session: AsyncSession, login: str) -> bool:
    return bool(await session.scalar(select(exists().where(Staff.login == login))))


async def staff_by_id(session: AsyncSession, staff_id: str) -> Staff | None:
    return await session.get(Staff, staff_id)


async def client_name_taken(session: AsyncSession, name: str) -> bool:
    return bool(await session.scalar(select(exists().where(SystemClient.name == name))))


async def client_by_id(session: AsyncSession, client_id: str) -> SystemClient | None:
    return await session.get(SystemClient, client_id)


async def newest_first(
    session: AsyncSession, model: type[Listed], *, limit: int, after: Keyset | None
) -> list[Listed]:
    """Up to ``limit`` rows, newest first, strictly after the keyset of the previous page."""
    statement = select(model).order_by(model.created_at.desc(), model.id.desc()).limit(limit)
    if after is not None:
        statement = statement.where(
            or_(
                model.created_at < after.created_at,
                and_(model.created_at == after.created_at, model.id < after.id),
            )
        )
    return list((await session.scalars(statement)).all())
