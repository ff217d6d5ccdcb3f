"""Who is calling: the bearer token, decoded strictly, bound to the request's unit of work."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer

from app.audit.events import Action, denied_event
from app.auth.tokens import Principal
from app.errors import PasswordChangeRequired, Unauthorized
from app.kit.deps import RuntimeDep
from app.runtime import Runtime
from app.uow import UnitOfWork, UnitOfWorkDep

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


def authenticate(
    runtime: Runtime, uow: UnitOfWork, token: str | None, *, self_service: bool = False
) -> Principal:
    """The token, strictly decoded, bound to the unit of work (which checks it against the
    database within the request's own queries, or before its commit).

    Every route authenticates here, so this is the one place that confines a token issued for
    a temporary password to the self-service routes (``self_service``): anywhere else it is a
    recorded ``403``."""
    if not token:
        raise Unauthorized()
    principal = runtime.tokens.decode(token)
    uow.bind_principal(principal)
    if principal.password_change_required and not self_service:
        raise PasswordChangeRequired(
            audit_event=denied_event(
                principal.actor, Action.LOGIN, uow.route(), PasswordChangeRequired.slug
            )
        )
    return principal


async def current_principal(
    runtime: RuntimeDep, uow: UnitOfWorkDep, token: BearerToken
) -> Principal:
    return authenticate(runtime, uow, token)


async def self_service_principal(
    runtime: RuntimeDep, uow: UnitOfWorkDep, token: BearerToken
) -> Principal:
    return authenticate(runtime, uow, token, self_service=True)


CurrentPrincipal = Annotated[Principal, Depends(current_principal, scope="function")]
# For the routes a member with a temporary password may call: /auth/password, /auth/me, logout.
SelfServicePrincipal = Annotated[Principal, Depends(self_service_principal, scope="function")]
