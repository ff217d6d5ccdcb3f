"""Rendering refusals as RFC 9457 problem details, and declaring them in the OpenAPI document."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.auth.tokens import SELF_SERVICE_PATHS
from app.crypto import DecryptionError
from app.errors import (
    PROBLEM_MEDIA_TYPE,
    DataIntegrityFailure,
    MethodNotAllowed,
    NotFound,
    PasswordChangeRequired,
    Problem,
    Unauthorized,
    ValidationFailed,
    all_problem_types,
)
from app.request_context import current_request_id

log = logging.getLogger("shopvault.errors")


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_body(problem: Problem, request_id: str) -> dict[str, Any]:
    return {
        "type": problem.type_uri,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "request_id": request_id,
        **problem.extra,
    }


def problem_response(problem: Problem, request_id: str | None = None) -> ProblemResponse:
    headers = {"Cache-Control": "no-store", **problem.headers}
    return ProblemResponse(
        problem_body(problem, request_id or current_request_id()),
        status_code=problem.status,
        headers=headers,
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Location, kind and message of each error, never the offending value (it may be personal
    # data). Our validators' messages are fixed sentences; pydantic's own name the rule broken.
    return [
        {
            "loc": list(error.get("loc", ())),
            "type": error.get("type", "invalid"),
            "msg": error.get("msg", ""),
        }
        for error in exc.errors()
    ]


def failure_response(exc: BaseException) -> ProblemResponse | None:
    """The answer to a refusal (``Problem``) or to a stored value that failed to decrypt, as
    the app's exception handlers give it; ``None`` for anything else."""
    if isinstance(exc, Problem):
        if exc.status >= 500:
            log.warning("refused", extra={"problem": exc.slug, "status": exc.status})
        return problem_response(exc)
    if isinstance(exc, DecryptionError):
        log.error("stored value failed to decrypt", extra={"error": type(exc).__name__})
        return problem_response(DataIntegrityFailure())
    return None


async def _on_problem(_request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, Problem)
    response = failure_response(exc)
    assert response is not None
    return response


# Routes that take a body from callers without a token.
_PUBLIC_BODY_ROUTES = frozenset({"/auth/token"})


def _token_refusal(request: Request) -> Problem | None:
    """FastAPI parses the body before any dependency runs; the check order still puts the token
    first, so an invalid body from a caller without a valid token is answered ``401`` (and one
    from a caller who must first change their password, ``403``)."""
    if request.url.path in _PUBLIC_BODY_ROUTES:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return Unauthorized()
    try:
        claims = request.app.state.runtime.tokens.decode(token)
    except Unauthorized as refused:
        return refused
    if claims.password_change_required and request.url.path not in SELF_SERVICE_PATHS:
        return PasswordChangeRequired()
    return None


async def _refusal_before_body(request: Request) -> Problem | None:
    """The check order puts the token, the headers and the role before the body: a body
    FastAPI rejected before any dependency ran must not hide their refusal."""
    from app.access.deps import admission_refusal  # the routers' admission, imported late

    refused = await admission_refusal(request)
    return refused if refused is not None else _token_refusal(request)


async def _on_validation(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    refused = await _refusal_before_body(request)
    if refused is not None:
        return problem_response(refused)
    problem = ValidationFailed(extra={"errors": _validation_errors(exc)})
    return problem_response(problem)


_UNDECODABLE_BODY = {
    "loc": ["body"],
    "type": "body_invalid",
    "msg": "The body could not be decoded.",
}


async def _on_http(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, Problem):
        # FastAPI turns any error while reading the body into a 400; keep ours (e.g. the 413).
        return problem_response(exc.__cause__)
    if exc.status_code == 400 and exc.__cause__ is not None:
        refused = await _refusal_before_body(request)
        if refused is not None:
            return problem_response(refused)
        # FastAPI's answer to a body it could not decode at all (e.g. not UTF-8): malformed
        # input, which the contract answers with 422 like any other unparsable body.
        return problem_response(ValidationFailed(extra={"errors": [_UNDECODABLE_BODY]}))
    problem: Problem
    if exc.status_code == 404:
        problem = NotFound()
    elif exc.status_code == 401:
        problem = Unauthorized()
    elif exc.status_code == 405:
        problem = MethodNotAllowed(headers={"Allow": _allowed_methods(request)})
    else:
        problem = Problem(detail="The request could not be handled.")
        problem.status = exc.status_code  # type: ignore[misc]
        problem.slug = "http-error"  # type: ignore[misc]
        problem.title = "HTTP error"  # type: ignore[misc]
        # Any other status Starlette raises keeps its headers.
        problem.headers.update(exc.headers or {})
    return problem_response(problem)


def _allowed_methods(request: Request) -> str:
    """Every method some route answers at this path (Starlette names only the first route's,
    and a path's methods are often split over several routes)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.methods and route.path and compile_path(route.path)[0].match(request.url.path):
            methods.update(route.methods)
    return ", ".join(sorted(methods))


async def _on_decryption_failure(_request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, DecryptionError)
    response = failure_response(exc)
    assert response is not None
    return response


async def _on_unexpected(_request: Request, exc: Exception) -> ProblemResponse:
    log.error("unhandled error", extra={"error": type(exc).__name__})
    return problem_response(Problem())


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(DecryptionError, _on_decryption_failure)
    app.add_exception_handler(Exception, _on_unexpected)


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details. `type` is stable per cause.",
    "required": ["type", "title", "status", "detail", "request_id"],
    "properties": {
        "type": {"type": "string", "examples": ["/problems/purpose-required"]},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "For `422`: where each invalid value is (never the value).",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "type": {"type": "string"},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}

_DESCRIPTIONS = {
    400: "Missing or malformed header",
    401: "No valid token",
    403: "Refused by policy (recorded as a denied access event)",
    404: "Not found",
    409: "Conflict",
    413: "Body larger than 1 MiB",
    422: "Invalid body or parameters",
    429: "Rate limited (see Retry-After)",
    500: "Internal error",
    503: "Unavailable, or the access could not be recorded (see Retry-After)",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: these statuses answer with problem details."""
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def declare_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Every operation declares its errors as problem+json: its own, 422, 413, 500 and 503."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    schemas = schema["components"]["schemas"]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            extra = [422, 500, 503]
            if "requestBody" in operation:
                extra.append(413)
            if operation.get("security"):
                extra.append(401)
            for status in extra:
                responses.setdefault(str(status), {"description": _DESCRIPTIONS[status]})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: ref}
    return schema


def problem_catalogue() -> list[dict[str, Any]]:
    return [
        {"type": cls.slug and "/problems/" + cls.slug, "title": cls.title, "status": cls.status}
        for cls in all_problem_types()
    ]
