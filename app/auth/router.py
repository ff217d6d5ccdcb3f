"""``/auth``: tokens for staff and system clients, logout, password change, who am I."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Header

from app.auth import service
from app.auth.deps import SelfServicePrincipal
from app.auth.schemas import Me, PasswordChange, TokenResponse
from app.errors import InvalidCredentials
from app.kit.deps import RuntimeDep
from app.problems import problem_responses
from app.uow import UnitOfWorkDep

router = APIRouter(prefix="/auth", tags=["auth"], responses=problem_responses(401))

FormField = Annotated[str | None, Form()]
MAX_CREDENTIAL_LENGTH = 256


@router.post(
    "/token",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    responses=problem_responses(400, 401, 429),
)
async def issue_token(
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    grant_type: FormField = None,
    username: FormField = None,
    password: FormField = None,
    client_id: FormField = None,
    client_secret: FormField = None,
    x_terminal_id: Annotated[str | None, Header()] = None,
) -> TokenResponse:
    """OAuth2 token endpoint (form-encoded).

    `grant_type=password` with `username` and `password` for staff; `grant_type=client_credentials`
    with `client_id` and `client_secret` for system clients. `X-Terminal-Id` records the POS
    terminal in the token and in every access event made with it. Failures answer `401` the same
    way whether or not the login exists, and are throttled (`429` with `Retry-After`): every
    attempt counts against `LOGIN_RATE_LIMIT` (per login and per client address) until it
    succeeds. A temporary password (one an admin set) answers `password_change_required: true`.
    """
    address = uow.client_address()
    given = (username, password, client_id, client_secret)
    if any(value is not None and len(value) > MAX_CREDENTIAL_LENGTH for value in given):
        raise InvalidCredentials()
    if grant_type == "password" and username and password:
        return await service.login_staff(
            uow,
            runtime,
            login=username,
            password=password,
            terminal=service.parse_terminal(x_terminal_id),
            client_address=address,
        )
    if grant_type == "client_credentials" and client_id and client_secret:
        return await service.login_client(
            uow, runtime, client_id=client_id, client_secret=client_secret, client_address=address
        )
    raise InvalidCredentials("Send grant_type=password or client_credentials with credentials.")


@router.post("/logout", status_code=204)
async def logout(uow: UnitOfWorkDep, principal: SelfServicePrincipal) -> None:
    """Revoke the caller's token (for shared POS terminals)."""
    await service.logout(uow, principal)


@router.post(
    "/password",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    responses=problem_responses(403, 429),
)
async def change_password(
    body: PasswordChange, runtime: RuntimeDep, uow: UnitOfWorkDep, principal: SelfServicePrincipal
) -> TokenResponse:
    """Change your own password. Every token issued before stops working; a new one is returned.
    The current password counts against `LOGIN_RATE_LIMIT` like a login (`429`)."""
    return await service.change_password(uow, runtime, principal, body, uow.client_address())


@router.get("/me", response_model=Me)
async def me(uow: UnitOfWorkDep, principal: SelfServicePrincipal) -> Me:
    """The caller: id, login, role and store code, and whether they must set a password."""
    return await service.me(uow, principal)
