"""Queries about callers: staff, system clients, revoked tokens."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.tokens import Principal
from app.models import RevokedToken, Staff, SystemClient


@functools.cache
def principal_check_clause(kind: str, has_store: bool) -> ColumnElement[bool]:
    not_revoked = ~exists().where(RevokedToken.jti == bindparam("p_jti"))
    if kind == "staff":
        holder = exists().where(
            Staff.id == bindparam("p_sub"),
            Staff.active.is_(True),
            Staff.auth_epoch == bindparam("p_epoch"),
            Staff.role == bindparam("p_role"),
            Staff.store_id == bindparam("p_store") if has_store else Staff.store_id.is_(None),
        )
    else:
        holder = exists().where(
            SystemClient.id == bindparam("p_sub"),
            SystemClient.active.is_(True),
            SystemClient.auth_epoch == bindparam("p_epoch"),
            SystemClient.role == bindparam("p_role"),
        )
    return and_(holder, not_revoked)


def principal_is_current(principal: Principal) -> ColumnElement[bool]:
    """True while the token's holder is active, unchanged since issue, and the token unrevoked.

    An expression (built once per shape, with the values as ``principal_params``), so that a
    request's own query can carry it instead of a separate round trip.
    """
    return principal_check_clause(principal.kind, principal.store_id is not None)


def principal_params(principal: Principal) -> dict[str, Any]:
    params: dict[str, Any] = {
        "p_jti": principal.jti,
        "p_sub": principal.subject,
        "p_epoch": principal.auth_epoch,
        "p_role": principal.role.value,
    }
    if principal.store_id is not None:
        params["p_store"] = principal.store_id
    return params


async def is_current(session: AsyncSession, principal: Principal) -> bool:
    statement = select(principal_is_current(principal))
    return bool((await session.execute(statement, principal_params(principal))).scalar())


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
