"""Logging in and out, and changing one's own password."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from app.audit.events import Action, Actor, EventDraft, denied_event
from app.auth import repository
from app.auth.passwords import (
    hash_password_async,
    verify_client_secret,
    verify_password,
)
from app.auth.repository import StaffCredentials
from app.auth.schemas import Me, PasswordChange, TokenResponse
from app.auth.tokens import Principal
from app.client_address import limit_key
from app.errors import (
    BadHeader,
    Forbidden,
    InvalidCredentials,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from app.models.base import utcnow
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


def _staff_actor(staff: StaffCredentials, terminal: str | None) -> Actor:
    return Actor(
        name=staff.login,
        id=staff.id,
        role=staff.role,
        store=staff.store_code,
        terminal=terminal,
    )


def _failed_login(actor: Actor) -> InvalidCredentials:
    return InvalidCredentials(
        audit_event=denied_event(actor, Action.LOGIN, "auth/token", InvalidCredentials.slug)
    )


def _throttled(actor: Actor, resource: str) -> EventDraft:
    return denied_event(actor, Action.LOGIN, resource, RateLimited.slug)


def login_limit_keys(login: str, client_address: str) -> tuple[str, str]:
    """The counters of ``LOGIN_RATE_LIMIT``: one per login, one per client address (an IPv6
    address by its /64). What was typed as a login is kept only as a hash: it may be a
    mistyped password."""
    login_digest = hashlib.sha256(login.casefold().encode()).hexdigest()[:32]
    return f"login:name:{login_digest}", f"login:addr:{limit_key(client_address)}"


def _may_log_in(staff: StaffCredentials, now: datetime) -> bool:
    return (
        staff.active
        and not staff.pending_approval
        and Role(staff.role) in STAFF_ROLES
        and (staff.password_expires_at is None or staff.password_expires_at > now)
    )


async def login_staff(
    uow: UnitOfWork,
    runtime: Runtime,
    *,
    login: str,
    password: str,
    terminal: str | None,
    client_address: str,
) -> TokenResponse:
    """Counted before the password is checked (so concurrent guesses cannot overshoot the
    limit), forgiven on success; the password is checked with no transaction open."""
    limit = runtime.settings.login_rate_limit
    keys = login_limit_keys(login, client_address)
    await runtime.limits.reserve(
        limit, *keys, audit_event=_throttled(_anonymous(terminal), "auth/token"), kind="login"
    )
    staff = await repository.staff_credentials(uow.session, login)
    await uow.end_reads()
    password_ok = await verify_password(staff.password_hash if staff else None, password)
    if staff is None or not password_ok or not _may_log_in(staff, utcnow()):
        raise _failed_login(_staff_actor(staff, terminal) if staff else _anonymous(terminal))
    await runtime.limits.forgive(limit, *keys)
    temporary = staff.password_expires_at is not None
    token, claims = runtime.tokens.issue(
        subject=staff.id,
        kind="staff",
        login=staff.login,
        role=Role(staff.role),
        auth_epoch=staff.auth_epoch,
        store_id=staff.store_id,
        store_code=staff.store_code,
        terminal=terminal,
        password_change_required=temporary,
    )
    uow.record(EventDraft(actor=claims.actor, action=Action.LOGIN, resource="auth/token"))
    return TokenResponse(
        access_token=token,
        expires_in=runtime.settings.token_ttl_seconds,
        password_change_required=True if temporary else None,
    )


def _anonymous(terminal: str | None) -> Actor:
    return Actor(name=None, id=None, role=None, store=None, terminal=terminal)


async def login_client(
    uow: UnitOfWork,
    runtime: Runtime,
    *,
    client_id: str,
    client_secret: str,
    client_address: str,
) -> TokenResponse:
    limit = runtime.settings.login_rate_limit
    keys = login_limit_keys(client_id, client_address)
    await runtime.limits.reserve(
        limit, *keys, audit_event=_throttled(_anonymous(None), "auth/token"), kind="login"
    )
    client = await repository.client_by_name(uow.session, client_id)
    secret_ok = verify_client_secret(client.secret_hash if client else None, client_secret)
    if (
        client is None
        or not secret_ok
        or not client.active
        or client.pending_approval
        or Role(client.role) not in CLIENT_ROLES
    ):
        actor = Actor(
            name=client.name if client else None,
            id=client.id if client else None,
            role=client.role if client else None,
            store=None,
            terminal=None,
        )
        raise _failed_login(actor)
    await runtime.limits.forgive(limit, *keys)
    token, claims = runtime.tokens.issue(
        subject=client.id,
        kind="client",
        login=client.name,
        role=Role(client.role),
        auth_epoch=client.auth_epoch,
    )
    uow.record(EventDraft(actor=claims.actor, action=Action.LOGIN, resource="auth/token"))
    return TokenResponse(access_token=token, expires_in=runtime.settings.token_ttl_seconds)


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
        password_change_required=principal.password_change_required,
    )


async def change_password(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    change: PasswordChange,
    client_address: str,
) -> TokenResponse:
    """Change one's own password; every older token stops working and a fresh one is returned.

    The current password is guarded like a login (counted first, forgiven when right), and
    Argon2 runs between two transactions: the read, and the write that is conditional on the
    member being unchanged since."""
    if principal.kind != "staff":
        raise Forbidden("Only staff have passwords; system clients rotate their secret.")
    current_hash = await repository.password_hash_of(uow.session, principal.subject)
    await uow.verify_principal()
    assert current_hash is not None  # the principal is current, so the member exists
    limit = runtime.settings.login_rate_limit
    keys = login_limit_keys(principal.login, client_address)
    await runtime.limits.reserve(
        limit, *keys, audit_event=_throttled(principal.actor, "auth/password"), kind="password"
    )
    await uow.end_reads()
    if not await verify_password(current_hash, change.current):
        raise Forbidden(
            "The current password is not correct.",
            audit_event=denied_event(
                principal.actor, Action.LOGIN, "auth/password", "invalid-credentials"
            ),
        )
    await runtime.limits.forgive(limit, *keys)
    check_password_policy(change.new, principal.login)
    if change.new == change.current:
        raise ValidationFailed("The new password must differ from the current one.")
    new_hash = await hash_password_async(change.new)
    epoch = await repository.set_own_password(
        uow.session, principal.subject, epoch=principal.auth_epoch, password_hash=new_hash
    )
    if epoch is None:
        raise Unauthorized("The token is no longer valid.")
    token, claims = runtime.tokens.issue(
        subject=principal.subject,
        kind="staff",
        login=principal.login,
        role=principal.role,
        auth_epoch=epoch,
        store_id=principal.store_id,
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
