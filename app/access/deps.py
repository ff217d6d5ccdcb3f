"""The dependencies that admit a caller to a route: ``AccessTo(operation)`` for routes that
touch customer data (token, purpose, reason, visit), ``PrincipalFor(operation)`` for the shop's
own records and administration (token only).

Both run the check order's steps that need nothing but the request — the token, the headers,
may this role do this operation for this purpose, is a visit or reason given — before FastAPI
validates the body: a malformed body never hides a refusal, and every refusal is recorded.
The operation a route declares is how ``/docs`` and the route × role matrix test know its rule.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam

from app.access.context import (
    PURPOSE_HEADER,
    REASON_HEADER,
    SUBJECT_REQUEST_HEADER,
    VISIT_HEADER,
    AccessContext,
    parse_purpose,
    parse_reason,
    parse_subject_request_id,
    parse_visit_id,
)
from app.access.guard import permit, refuse_role
from app.audit.events import Action
from app.auth.deps import BearerToken, CurrentPrincipal, authenticate
from app.auth.tokens import Principal
from app.errors import Problem
from app.kit.deps import RuntimeDep
from app.kit.ids import MALFORMED_ID, canonical_id
from app.policy import OPERATIONS, Operation
from app.runtime import Runtime
from app.uow import UnitOfWork, UnitOfWorkDep

_METHOD_ACTION = {"GET": Action.READ, "POST": Action.CREATE, "PATCH": Action.UPDATE}
OPERATION_ATTRIBUTE = "shopvault_operation"


def route_resource(request: Request) -> str:
    """The resource a refusal names: the route's path with each id in canonical form (or the
    malformed marker), never a raw value from the URL."""
    route = request.scope.get("route")
    resource: str = getattr(route, "path", request.url.path)
    for name, value in request.path_params.items():
        resource = resource.replace("{" + name + "}", canonical_id(str(value)) or MALFORMED_ID)
    return resource.strip("/")


def asked_customer(request: Request) -> tuple[str, ...]:
    cid = canonical_id(request.path_params.get("customer_id"))
    return (cid,) if cid else ()


def refusal_action(operation: Operation, request: Request) -> Action:
    """What a refused request is recorded as: the operation's action, or, for operations on the
    shop's records, the HTTP method's (a POST to an existing resource, like close, updates)."""
    action = OPERATIONS[operation].action
    if action is not None:
        return action
    if request.method == "POST" and request.path_params:
        return Action.UPDATE
    return _METHOD_ACTION.get(request.method, Action.READ)


def admit(
    request: Request,
    runtime: Runtime,
    uow: UnitOfWork,
    operation: Operation,
    *,
    token: str | None,
    purpose: str | None,
    reason: str | None,
    visit: str | None,
    subject_request: str | None,
) -> AccessContext:
    """The caller, admitted for ``operation`` by the token and the access headers, or the
    refusal the check order gives (the role, the purpose, a visit or reason not given)."""
    ctx = AccessContext(
        principal=authenticate(runtime, uow, token),
        operation=operation,
        purpose=parse_purpose(purpose),
        reason=parse_reason(reason),
        visit_id=parse_visit_id(visit),
        subject_request_id=parse_subject_request_id(subject_request),
    )
    permit(
        ctx,
        action=refusal_action(operation, request),
        resource=route_resource(request),
        customer_ids=asked_customer(request),
    )
    return ctx


def access_to(operation: Operation) -> Callable[..., Coroutine[Any, Any, AccessContext]]:
    async def admit_access(
        request: Request,
        runtime: RuntimeDep,
        uow: UnitOfWorkDep,
        token: BearerToken,
        purpose: Annotated[str | None, PURPOSE_HEADER] = None,
        reason: Annotated[str | None, REASON_HEADER] = None,
        visit: Annotated[str | None, VISIT_HEADER] = None,
        subject_request: Annotated[str | None, SUBJECT_REQUEST_HEADER] = None,
    ) -> AccessContext:
        # One dependency level for the token and the headers: this runs on every access.
        return admit(
            request,
            runtime,
            uow,
            operation,
            token=token,
            purpose=purpose,
            reason=reason,
            visit=visit,
            subject_request=subject_request,
        )

    setattr(admit_access, OPERATION_ATTRIBUTE, operation)
    return admit_access


def principal_for(operation: Operation) -> Callable[..., Coroutine[Any, Any, Principal]]:
    async def admit_principal(request: Request, principal: CurrentPrincipal) -> Principal:
        if principal.role not in OPERATIONS[operation].roles:
            raise refuse_role(
                principal,
                action=refusal_action(operation, request),
                resource=route_resource(request),
            )
        return principal

    setattr(admit_principal, OPERATION_ATTRIBUTE, operation)
    return admit_principal


def AccessTo(operation: Operation) -> DependsParam:
    """``Annotated[AccessContext, AccessTo(Operation.X)]``: admitted for ``operation``."""
    marker: DependsParam = Depends(access_to(operation), scope="function")
    return marker


def PrincipalFor(operation: Operation) -> DependsParam:
    """``Annotated[Principal, PrincipalFor(Operation.X)]``: admitted for ``operation``."""
    marker: DependsParam = Depends(principal_for(operation), scope="function")
    return marker


def operation_of(route: Any) -> Operation | None:
    """The operation a route declared through its admitting dependency, if any."""
    stack = list(getattr(getattr(route, "dependant", None), "dependencies", ()))
    while stack:
        dependant = stack.pop()
        found = getattr(dependant.call, OPERATION_ATTRIBUTE, None)
        if found is not None:
            return Operation(found)
        stack.extend(dependant.dependencies)
    return None


async def admission_refusal(request: Request) -> Problem | None:
    """The refusal a route's admitting dependency gives a request whose body FastAPI could not
    parse at all (it parses JSON before any dependency runs), recorded like any other; ``None``
    when the caller would have been admitted (the body's ``422`` stands)."""
    route = request.scope.get("route")
    operation = operation_of(route)
    if operation is None:
        return None
    runtime: Runtime = request.app.state.runtime
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials if scheme.lower() == "bearer" and credentials else None
    async with runtime.sessions() as session:
        uow = UnitOfWork(session, runtime.audit_log, group_commit=runtime.group_commit)
        try:
            if OPERATIONS[operation].purposes is None:
                await principal_for(operation)(request, authenticate(runtime, uow, token))
            else:
                await access_to(operation)(
                    request,
                    runtime,
                    uow,
                    token,
                    request.headers.get("x-access-purpose"),
                    request.headers.get("x-access-reason"),
                    request.headers.get("x-visit-id"),
                    request.headers.get("x-subject-request-id"),
                )
        except Problem as refusal:
            try:
                await uow.fail(refusal)
            except Problem as failed:
                return failed
            return refusal
    return None
