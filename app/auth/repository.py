"""Queries about callers: staff, system clients, revoked tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.tokens import Principal
from app.models import RevokedToken, Staff, SystemClient


def principal_is_current(principal: Principal) -> ColumnElement[bool]:
    """True while the token's holder is active, unchanged since issue, and the token unrevoked.

    An expression, so that a request's own query can carry it instead of a separate round trip.
    """
    not_revoked = ~exists().where(RevokedToken.jti == principal.jti)
    if principal.kind == "staff":
        holder = exists().where(
            Staff.id == principal.subject,
            Staff.active.is_(True),
            Staff.auth_epoch == principal.auth_epoch,
            Staff.role == principal.role.value,
            Staff.store_id.is_(None)
            if principal.store_id is None
            else Staff.store_id == principal.store_id,
        )
    else:
        holder = exists().where(
            SystemClient.id == principal.subject,
            SystemClient.active.is_(True),
            SystemClient.auth_epoch == principal.auth_epoch,
            SystemClient.role == principal.role.value,
        )
    return and_(holder, not_revoked)


async def is_current(session: AsyncSession, principal: Principal) -> bool:
    return bool((await session.execute(select(principal_is_current(principal)))).scalar())


async def staff_by_login(session: AsyncSession, login: str) -> Staff | None:
    return (await session.execute(select(Staff).where(Staff.login == login))).scalar_one_or_none()


async def staff_by_id(session: AsyncSession, staff_id: str) -> Staff | None:
    return await session.get(Staff, staff_id)


async def client_by_name(session: AsyncSession, name: str) -> SystemClient | None:
    statement = select(SystemClient).where(SystemClient.name == name)
    return (await session.execute(statement)).scalar_one_or_none()


async def revoke(session: AsyncSession, jti: str, expires_at: datetime) -> None:
    if await session.get(RevokedToken, jti) is None:
        session.add(RevokedToken(jti=jti, expires_at=expires_at))
