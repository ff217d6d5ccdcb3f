"""``GET /customers/{customer_id}``, served as one ASGI handler.

The POS terminals' most frequent call. FastAPI's routing, dependency resolution and response
validation cost more CPU per read than the policy, decryption and audit event that shopvault
adds to it (``bench/README.md``), so this read is answered here, in front of FastAPI's router,
by the steps its declared route (``app/customers/router.py``) runs: the same admission
(``admit``: token, purpose, reason, visit, role), the same service (``disclose_customer``), the
same unit of work (``request_unit_of_work``: the access event committed before the answer is
sent) and the same problem details. The declared route stays what ``/docs`` documents and the
reference the two are held to, byte for byte, by ``tests/test_read_route.py``.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.access.deps import admit, operation_of
from app.customers import service
from app.customers.router import router as customers_router
from app.problems import failure_response
from app.runtime import Runtime
from app.uow import request_unit_of_work

PATH = "/customers/{customer_id}"
_PREFIX = PATH.removesuffix("{customer_id}")
# The headers the admission reads; the first of each counts, as FastAPI's ``Header`` takes it.
_ACCESS_HEADERS = frozenset(
    {
        b"authorization",
        b"x-access-purpose",
        b"x-access-reason",
        b"x-visit-id",
        b"x-subject-request-id",
    }
)


def declared_route() -> APIRoute:
    """The route this handler answers for, as the customers router declares it."""
    for route in customers_router.routes:
        if isinstance(route, APIRoute) and route.path == PATH and "GET" in (route.methods or ()):
            return route
    raise LookupError(f"no GET {PATH} in the customers router")


# What the declared route depends on, and all that this handler does in their place: a
# dependency added there (or to the router) would be skipped here, so it stops the app instead.
_REPLACED = frozenset({"admit_access", "runtime_of", "unit_of_work"})


def _check_replaceable(route: APIRoute) -> None:
    calls = {getattr(d.call, "__name__", repr(d.call)) for d in route.dependant.dependencies}
    if route.dependencies or calls != _REPLACED:
        raise LookupError(
            f"GET {PATH} depends on {sorted(calls)}; its handler replaces {sorted(_REPLACED)}"
        )


def _customer_id(scope: Scope) -> str | None:
    """The path segment that Starlette's router would give as ``customer_id``, if this is the
    path (one non-empty segment after the prefix)."""
    path: str = scope["path"]
    root = scope.get("root_path", "").rstrip("/")
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    if not path.startswith(_PREFIX):
        return None
    segment = path[len(_PREFIX) :]
    return segment if segment and "/" not in segment else None


def _access_headers(scope: Scope) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _ACCESS_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found


def _bearer(authorization: str | None) -> str | None:
    """The token as FastAPI's ``OAuth2PasswordBearer(auto_error=False)`` gives it."""
    scheme, token = get_authorization_scheme_param(authorization)
    return token if authorization and scheme.lower() == "bearer" else None


class CustomerReadRoute:
    """ASGI middleware: answers ``GET /customers/{customer_id}``; everything else passes on."""

    def __init__(self, app: ASGIApp, *, runtime: Runtime, route: APIRoute | None = None) -> None:
        self.app = app
        self.runtime = runtime
        self.route = route or declared_route()
        _check_replaceable(self.route)
        operation = operation_of(self.route)
        if operation is None:
            raise LookupError(f"GET {PATH} declares no operation")
        self.operation = operation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        customer_id = _customer_id(scope)
        if customer_id is None:
            await self.app(scope, receive, send)
            return
        # What Starlette's router sets when it matches: route-level code reads both.
        scope["route"] = self.route
        scope["path_params"] = {"customer_id": customer_id}
        response = await self._answer(Request(scope), customer_id)
        await response(scope, receive, send)

    async def _answer(self, request: Request, customer_id: str) -> Response:
        runtime = self.runtime
        headers = _access_headers(request.scope)
        try:
            async with request_unit_of_work(runtime, request) as uow:
                ctx = admit(
                    request,
                    runtime,
                    uow,
                    self.operation,
                    token=_bearer(headers.get(b"authorization")),
                    purpose=headers.get(b"x-access-purpose"),
                    reason=headers.get(b"x-access-reason"),
                    visit=headers.get(b"x-visit-id"),
                    subject_request=headers.get(b"x-subject-request-id"),
                )
                view = await service.disclose_customer(uow, runtime, ctx, customer_id)
                # As FastAPI serializes the declared response model (exclude_unset, aliases);
                # before the commit, so that an answer that cannot be built records nothing.
                body = view.__pydantic_serializer__.to_json(view, exclude_unset=True, by_alias=True)
        except Exception as exc:
            failure = failure_response(exc)
            if failure is None:
                raise
            return failure
        return Response(body, media_type="application/json")
