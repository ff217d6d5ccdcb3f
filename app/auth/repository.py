"""Queries about callers: staff, system clients, revoked tokens."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.tokens import Principal
from app.models import RevokedToken, Staff, Store, SystemClient


@functools.cache
def principal_check_clause(kind: str, has_store: bool) -> ColumnElement[bool]:
    not_revoked = ~exists().where(RevokedToken.jti == bindparam("p_jti"))
    if kind == "staff":
        holder = exists().where(
            Staff.id == bindparam("p_sub"),
            Staff.active.is_(True),
            Staff.pending_approval.is_(False),
            Staff.auth_epoch == bindparam("p_epoch"),
            Staff.role == bindparam("p_role"),
            Staff.store_id == bindparam("p_store") if has_store else Staff.store_id.is_(None),
        )
    else:
        holder = exists().where(
            SystemClient.id == bindparam("p_sub"),
            SystemClient.active.is_(True),
            SystemClient.pending_approval.is_(False),
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


@dataclass(frozen=True, slots=True)
class StaffCredentials:
    """What a login needs to know about a member: plain values, which outlive the (short)
    transaction that read them, so the password is checked with no transaction open."""

    id: str
    login: str
    role: str
    store_id: str | None
    store_code: str | None
    password_hash: str
    active: bool
    pending_approval: bool
    auth_epoch: int
    password_expires_at: datetime | None


_CREDENTIALS = select(
    Staff.id,
    Staff.login,
    Staff.role,
    Staff.store_id,
    Store.code.label("store_code"),
    Staff.password_hash,
    Staff.active,
    Staff.pending_approval,
    Staff.auth_epoch,
    Staff.password_expires_at,
).outerjoin(Store, Store.id == Staff.store_id)


async def staff_credentials(session: AsyncSession, login: str) -> StaffCredentials | None:
    row = (await session.execute(_CREDENTIALS.where(Staff.login == login))).one_or_none()
    return StaffCredentials(**row._asdict()) if row is not None else None


async def password_hash_of(session: AsyncSession, staff_id: str) -> str | None:
    return await session.scalar(select(Staff.password_hash).where(Staff.id == staff_id))


async def set_own_password(
    session: AsyncSession, staff_id: str, *, epoch: int, password_hash: str
) -> int | None:
    """Replace the member's password (no longer temporary) and end their tokens, atomically:
    only if nothing changed the member since ``epoch``. The new epoch, or None."""
    statement = (
        update(Staff)
        .where(Staff.id == staff_id, Staff.auth_epoch == epoch)
        .values(
            password_hash=password_hash,
            password_expires_at=None,
            auth_epoch=Staff.auth_epoch + 1,
        )
        .returning(Staff.auth_epoch)
    )
    return await session.scalar(statement)


async def client_by_name(session: AsyncSession, name: str) -> SystemClient | None:
    statement = select(SystemClient).where(SystemClient.name == name)
    return (await session.execute(statement)).scalar_one_or_none()


async def revoke(session: AsyncSession, jti: str, expires_at: datetime) -> None:
    if await session.get(RevokedToken, jti) is None:
        session.add(RevokedToken(jti=jti, expires_at=expires_at))
