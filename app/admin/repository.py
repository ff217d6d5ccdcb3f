"""Queries of the administration capability: stores, staff and system clients."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import ColumnElement, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.kit.pagination import PageRequest
from app.kit.pagination import newest_first as keyset_newest_first
from app.models import Staff, Store, SystemClient
from app.models.base import Base

Listed = TypeVar("Listed", Store, Staff, SystemClient)
Account = TypeVar("Account", Staff, SystemClient)


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


def end_tokens(account: Staff | SystemClient) -> None:
    """Bump the account's ``auth_epoch`` in SQL (``SET auth_epoch = auth_epoch + 1``, at the
    flush), so concurrent changes each end the tokens: no read-modify-write in Python."""
    account.auth_epoch = type(account).auth_epoch + 1


async def approve(
    session: AsyncSession, model: type[Account], account_id: str, now: datetime
) -> Account | None:
    """Clear the account's pending approval, only if it is pending (two auditors approving at
    once: one wins); the account as it is now, or None."""
    statement = (
        update(model)
        .where(model.id == account_id, model.pending_approval.is_(True))
        .values(pending_approval=False, updated_at=now)
        .returning(model.id)
    )
    if await session.scalar(statement) is None:
        return None
    return await session.get(model, account_id, populate_existing=True)


async def client_name_taken(session: AsyncSession, name: str) -> bool:
    return bool(await session.scalar(select(exists().where(SystemClient.name == name))))


async def client_by_id(session: AsyncSession, client_id: str) -> SystemClient | None:
    return await session.get(SystemClient, client_id)


def pending_is(model: type[Account], pending: bool | None) -> list[ColumnElement[bool]]:
    """The filter of ``?pending=``: accounts waiting for approval, the others, or all."""
    return [] if pending is None else [model.pending_approval.is_(pending)]


async def newest_first(
    session: AsyncSession,
    model: type[Listed],
    page: PageRequest,
    where: Sequence[ColumnElement[bool]] = (),
) -> list[Listed]:
    """One page of rows (and one more), newest first, after the previous page's keyset."""
    statement = keyset_newest_first(select(model).where(*where), model.created_at, model.id, page)
    return list((await session.scalars(statement)).all())
