"""Queries of the administration capability: stores, staff and system clients."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.pagination import PageRequest
from app.kit.pagination import newest_first as keyset_newest_first
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
    session: AsyncSession, model: type[Listed], page: PageRequest
) -> list[Listed]:
    """One page of rows (and one more), newest first, after the previous page's keyset."""
    statement = keyset_newest_first(select(model), model.created_at, model.id, page)
    return list((await session.scalars(statement)).all())
