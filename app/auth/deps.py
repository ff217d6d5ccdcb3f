"""Who is calling: the bearer token, decoded strictly, bound to the request's unit of work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer

from app.audit.events import Action, EventDraft, Outcome
from app.auth.tokens import Principal
from app.errors import Forbidden, Unauthorized
from app.kit.deps import RuntimeDep
from app.roles import Role
from app.runtime import Runtime
from app.uow import UnitOfWork, UnitOfWorkDep

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


def authenticate(runtime: Runtime, uow: UnitOfWork, token: str | None) -> Principal:
    """The token, strictly decoded, bound to the unit of work (which checks it against the
    database within the request's own queries, or before its commit)."""
    if not token:
        raise Unauthorized()
    principal = runtime.tokens.decode(token)
    uow.bind_principal(principal)
    return principal


async def current_principal(
    runtime: RuntimeDep, uow: UnitOfWorkDep, token: BearerToken
) -> Principal:
    return authenticate(runtime, uow, token)


CurrentPrincipal = Annotated[Principal, Depends(current_principal, scope="function")]


def require_roles(
    *roles: Role, action: Action, resource: str
) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting only ``roles``; anyone else gets a recorded ``403``."""
    allowed = frozenset(roles)

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(
                audit_event=EventDraft(
                    actor=principal.actor,
                    action=action,
                    resource=resource,
                    outcome=Outcome.DENIED,
                    denial=Forbidden.slug,
                )
            )
        return principal

    return dependency
