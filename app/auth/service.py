"""Logging in and out, and changing one's own password."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime

from app.audit.events import Action, Actor, EventDraft, Outcome
from app.auth import repository
from app.auth.passwords import (
    hash_password_async,
    verify_client_secret,
    verify_password,
)
from app.auth.schemas import Me, PasswordChange, TokenResponse
from app.auth.tokens import Principal
from app.errors import BadHeader, Forbidden, InvalidCredentials, RateLimited, ValidationFailed
from app.models import Staff
from app.roles import CLIENT_ROLES, STAFF_ROLES, Role
from app.runtime import Runtime
from app.uow import UnitOfWork

TERMINAL_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def parse_terminal(value: str | None) -> str | None:
    if value is None:
        return None
    if not TERMINAL_ID.fullmatch(value):
        raise BadHeader("X-Terminal-Id must be 1-64 letters, digits or . _ : -")
    return value


def _staff_actor(staff: Staff, terminal: str | None) -> Actor:
    return Actor(
        name=staff.login,
        id=staff.id,
        role=staff.role,
        store=staff.store.code if staff.store else None,
        terminal=terminal,
    )


def _failed_login(actor: Actor) -> InvalidCredentials:
    return InvalidCredentials(
        audit_event=EventDraft(
            actor=actor,
            action=Action.LOGIN,
            resource="auth/token",
            outcome=Outcome.DENIED,
            denial=InvalidCredentials.slug,
        )
    )


async def _ensure_login_room(runtime: Runtime, keys: tuple[str, str], terminal: str | None) -> None:
    """Refuse a login whose name or address has failed too often; the refusal is recorded."""
    try:
        await runtime.limits.ensure_room(runtime.settings.login_rate_limit, *keys)
    except RateLimited as refused:
        refused.audit_event = EventDraft(
            actor=Actor(name=None, id=None, role=None, store=None, terminal=terminal),
            action=Action.LOGIN,
            resource="auth/token",
            outcome=Outcome.DENIED,
            denial=RateLimited.slug,
        )
        raise


def _limit_keys(login: str, client_address: str) -> tuple[str, str]:
    return f"login:name:{login.casefold()}", f"login:addr:{client_address}"


async def login_staff(
    uow: UnitOfWork,
    runtime: Runtime,
    *,
    login: str,
    password: str,
    terminal: str | None,
    client_address: str,
) -> TokenResponse:
    limit = runtime.settings.login_rate_limit
    keys = _limit_keys(login, client_address)
    await _ensure_login_room(runtime, keys, terminal)
    staff = await repository.staff_by_login(uow.session, login)
    password_ok = await verify_password(staff.password_hash if staff else None, password)
    if staff is None or not password_ok or not staff.active or Role(staff.role) not in STAFF_ROLES:
        await runtime.limits.hit(limit, *keys)
        unknown = Actor(name=None, id=None, role=None, store=None, terminal=terminal)
        raise _failed_login(_staff_actor(staff, terminal) if staff else unknown)
    token, claims = runtime.tokens.issue(
        subject=staff.id,
        kind="staff",
        login=staff.login,
        role=Role(staff.role),
        auth_epoch=staff.auth_epoch,
        store_id=staff.store_id,
        store_code=staff.store.code if staff.store else None,
        terminal=terminal,
    )
    uow.record(EventDraft(actor=claims.actor, action=Action.LOGIN, resource="auth/token"))
    return TokenResponse(access_token=token, expires_in=runtime.settings.token_ttl_seconds)


async def login_client(
    uow: UnitOfWork,
    runtime: Runtime,
    *,
    client_id: str,
    client_secret: str,
    client_address: str,
) -> TokenResponse:
    limit = runtime.settings.login_rate_limit
    keys = _limit_keys(client_id, client_address)
    await _ensure_login_room(runtime, keys, None)
    client = await repository.client_by_name(uow.session, client_id)
    secret_ok = verify_client_secret(client.secret_hash if client else None, client_secret)
    if (
        client is None
        or not secret_ok
        or not client.active
        or Role(client.role) not in CLIENT_ROLES
    ):
        await runtime.limits.hit(limit, *keys)
        actor = Actor(
            name=client.name if client else None,
            id=client.id if client else None,
            role=client.role if client else None,
            store=None,
            terminal=None,
        )
        raise _failed_login(actor)
    token, claims = runtime.tokens.issue(
        subject=client.id,
        kind="client",
        login=client.name,
        role=Role(client.role),
        auth_epoch=client.auth_epoch,
    )
    uow.record(EventDraft(actor=claims.actor, action=Action.LOGIN, resource="auth/token"))
    return TokenResponse(access_token=token, expires_in=runtime.settings.token_ttl_seconds)


def client_address(peer: str | None, forwarded_for: str | None, runtime: Runtime) -> str:
    """The caller's address: the peer's, or X-Forwarded-For's when the peer is a trusted proxy."""
    trusted = runtime.settings.trusted_proxy_networks

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    address = peer or "unknown"
    if not trusted or not is_trusted(address) or not forwarded_for:
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        address = hop
        if not is_trusted(hop):
            break
    return address


async def logout(uow: UnitOfWork, principal: Principal) -> None:
    await uow.verify_principal()
    expires_at = datetime.fromtimestamp(principal.expires_at, UTC)
    await repository.revoke(uow.session, principal.jti, expires_at)
    uow.record(EventDraft(actor=principal.actor, action=Action.LOGIN, resource="auth/logout"))


async def me(uow: UnitOfWork, principal: Principal) -> Me:
    await uow.verify_principal()
    return Me(
        id=principal.subject,
        login=principal.login,
        role=principal.role,
        store=principal.store_code,
    )


async def change_password(
    uow: UnitOfWork, runtime: Runtime, principal: Principal, change: PasswordChange
) -> TokenResponse:
    """Change one's own password; every older token stops working and a fresh one is returned."""
    staff = await repository.staff_by_id(uow.session, principal.subject)
    if staff is None or principal.kind != "staff":
        raise Forbidden("Only staff have passwords; system clients rotate their secret.")
    await uow.verify_principal()
    if not await verify_password(staff.password_hash, change.current):
        raise Forbidden(
            "The current password is not correct.",
            audit_event=EventDraft(
                actor=principal.actor,
                action=Action.LOGIN,
                resource="auth/password",
                outcome=Outcome.DENIED,
                denial="invalid-credentials",
            ),
        )
    check_password_policy(change.new, staff.login)
    if change.new == change.current:
        raise ValidationFailed("The new password must differ from the current one.")
    staff.password_hash = await hash_password_async(change.new)
    staff.auth_epoch += 1
    token, claims = runtime.tokens.issue(
        subject=staff.id,
        kind="staff",
        login=staff.login,
        role=Role(staff.role),
        auth_epoch=staff.auth_epoch,
        store_id=staff.store_id,
        store_code=principal.store_code,
        terminal=principal.terminal,
    )
    uow.record(EventDraft(actor=claims.actor, action=Action.LOGIN, resource="auth/password"))
    return TokenResponse(access_token=token, expires_in=runtime.settings.token_ttl_seconds)


def check_password_policy(password: str, login: str) -> None:
    if len(password) < 12:
        raise ValidationFailed("Passwords need at least 12 characters.")
    if login.casefold() in password.casefold():
        raise ValidationFailed("A password may not contain the login.")
