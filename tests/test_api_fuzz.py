"""Property-based fuzzing of the whole HTTP API with schemathesis.

Requests are generated from our own OpenAPI document — every phase the document allows
(examples, coverage, fuzzing), valid and invalid — and sent over real HTTP to a real uvicorn
server (the options of ``shopvault serve``) in front of a real database. Each case is sent as one
of the roles (a valid token from ``/auth/token``), with the purpose headers that role's policy
row needs. Whatever is sent, the answer is one the document declares (status, media type,
schema), never a server error; invalid data is refused; an operation that declares
authentication refuses requests without it (``ignored_auth`` probes each one); an undeclared
method is ``405`` with ``Allow``; every refusal is ``application/problem+json`` with its required
members; and no refusal repeats a value the caller sent (it may be personal data).

Half the cases are *grounded* in the world of the route × role matrix test
(``tests/test_route_matrix.py``): path ids name real rows, the access headers form the role's
valid context (a visit with the customer's proof of presence, or a reason), and what a schema
cannot say is filled in by the world (the customer's real PIN, a template's variables, an
identity-document number of the chosen type) — so generated bodies reach the services, and
registration, contracts, messages and paper forms are exercised for real: for those, a fixture
checks after the run that some case succeeded. ``make fuzz`` runs it deeper
(``SHOPVAULT_FUZZ_EXAMPLES``, random seeds, both databases).

Schemathesis' pytest plugin drives generation (one test per operation, fresh database each).
(``schemathesis.pytest.from_fixture`` would let the schema come from a fixture, but its runner
touches ``Node._nodeid``, which pytest 9.2 no longer has; the document is therefore built once
at collection, from an app that is never started.)
"""

from __future__ import annotations

import ast
import copy
import json
import os
import secrets
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr, ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from sqlalchemy import Engine

import app
from app.access.deps import operation_of
from app.config import Settings
from app.keys import encode_key
from app.main import create_app
from app.messages.catalog import CATALOG, VariableType
from app.policy import Operation
from app.roles import Role
from tests import cast
from tests.conftest import BACKENDS, SettingsFactory, login
from tests.servers import serving
from tests.test_route_matrix import CALLS, Logins, World, admitted_roles, context_headers
from tests.world import KNOWN_PINS, presence_of, register_customer

Headers = dict[str, str]
Case = schemathesis.Case[Any]

APP_SOURCE = Path(app.__file__).parent

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_MEMBERS = ("type", "title", "status", "detail", "request_id")
ECHO_MIN_LENGTH = 8
ACCESS_HEADERS = ("X-Access-Purpose", "X-Access-Reason", "X-Visit-Id", "X-Subject-Request-Id")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
]
ROLES = sorted(Role)
# Operations that must have succeeded at least once in a run: the fuzzer got past validation.
# Their valid cases are always grounded, and sent as a role they admit.
MUST_SUCCEED = {
    "POST /customers",
    "POST /customers/{customer_id}/contracts",
    "POST /customers/{customer_id}/messages",
    "POST /visits/{visit_id}/documents",
}
DEEP = int(os.environ.get("SHOPVAULT_FUZZ_EXAMPLES", "0"))
# The suite fuzzes on SQLite; the deeper run on PostgreSQL too, when it is configured.
FUZZ_BACKENDS = BACKENDS if DEEP else ["sqlite"]
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=DEEP or 15,
    # A fixed seed in the suite, so that what must succeed does in every run; ``make fuzz``
    # explores.
    derandomize=not DEEP,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
# Birth dates: between 1900 and today, which JSON Schema cannot say of a ``date``.
schemathesis.openapi.format(
    "date", st.dates(min_value=date(1900, 1, 1), max_value=date.today()).map(date.isoformat)
)


def _unused_settings() -> Settings:
    """Settings for an app that is never started and never connects."""

    def key() -> SecretStr:
        return SecretStr(encode_key(secrets.token_bytes(32)))

    unused = Path(tempfile.gettempdir()) / "shopvault-fuzz-unused"
    return Settings(
        data_dir=unused,
        database_url=f"sqlite:///{unused / 'never-opened.db'}",
        jwt_key=key(),
        master_key=key(),
        index_key=key(),
    )


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document. It depends on no setting and no row, so it is built once at
    collection."""
    return create_app(_unused_settings()).openapi()


def _closed_responses(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every object a response may carry closed (``additionalProperties:
    false``), so that the response check fails on any member the document does not name: no
    field beyond the views' can slip out."""
    closed = copy.deepcopy(document)
    schemas = closed["components"]["schemas"]
    seen: set[str] = set()

    def close(schema: Any) -> None:
        if isinstance(schema, list):
            for item in schema:
                close(item)
            return
        if not isinstance(schema, dict):
            return
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[1]
            if name not in seen:
                seen.add(name)
                close(schemas[name])
            return
        if "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            close(value)

    for item in closed["paths"].values():
        for operation in item.values():
            for response in operation.get("responses", {}).values():
                close(response.get("content", {}))
    return closed


DOCUMENT = openapi_document()


def _source_literals() -> Iterator[str]:
    """Every string literal of the app: problem types, titles and details are fixed text."""
    for path in APP_SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield node.value


# What a refusal may say whatever was sent: documented vocabulary (member and field names,
# purposes, patterns…) and the app's fixed sentences. A generated value found in it (the
# shrinker likes to make one) is not an echo.
VOCABULARY = "\n".join([json.dumps(DOCUMENT, ensure_ascii=False), *_source_literals()])


def _config(*phases: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "phases": {
                phase: {"enabled": phase in phases}
                for phase in ("examples", "coverage", "fuzzing", "stateful")
            },
            # The token is ours to set; a generated Authorization header would only be a 401.
            "generation": {"mode": "all", "with-security-parameters": False},
        }
    )


# Every phase the document allows: coverage (boundary values, each constraint broken in turn)
# and fuzzing (random cases, valid and invalid) here, the examples it shows in a test of their
# own (schemathesis does not combine them with extra strategies). The stateful phase needs
# links between operations, which the document does not declare.
CONFIG = _config("coverage", "fuzzing")
# Prometheus text is not a JSON schema's business; logging out would revoke the token every
# later case uses (it is fuzzed unauthenticated below).
NOT_FUZZED = ["/metrics", "/auth/logout"]
STRICT = _closed_responses(DOCUMENT)
schema = schemathesis.openapi.from_dict(STRICT, config=CONFIG).exclude(path=NOT_FUZZED)
examples_schema = schemathesis.openapi.from_dict(STRICT, config=_config("examples")).exclude(
    path=NOT_FUZZED
)
unauthenticated_schema = schemathesis.openapi.from_dict(STRICT, config=CONFIG).include(
    path=["/auth/me", "/auth/logout", "/stores", "/visits", "/customers/{customer_id}"]
)


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    # The fuzzer searches, sends and tries passwords far more often than a shop would; a 429
    # would hide the route (and wrong current passwords would end the world's own logins).
    return make_settings(
        search_rate_limit="100000/minute",
        login_rate_limit="100000/minute",
        message_daily_cap=100_000,
    )


class FuzzWorld(World):
    """The matrix test's world, over real HTTP, with what grounding needs besides."""

    base_url: str = ""

    def operation(self, case: Case) -> Operation | None:
        return _OPERATIONS.get((case.operation.method.upper(), case.operation.path))


def _operations() -> dict[tuple[str, str], Operation | None]:
    """Each route's declared operation (``None``: self-service)."""
    found: dict[tuple[str, str], Operation | None] = {}
    for route in iter_route_contexts(create_app(_unused_settings()).routes):
        for method in route.methods or ():
            found[(method, route.path)] = operation_of(route)
    return found


def _body_models() -> dict[tuple[str, str], type[BaseModel]]:
    """Each route's request body model."""
    found: dict[tuple[str, str], type[BaseModel]] = {}
    for route in iter_route_contexts(create_app(_unused_settings()).routes):
        dependant = getattr(route, "dependant", None)
        for parameter in getattr(dependant, "body_params", ()):
            model = parameter.field_info.annotation
            if isinstance(model, type) and issubclass(model, BaseModel):
                for method in route.methods or ():
                    found[(method, route.path)] = model
    return found


_OPERATIONS = _operations()
_BODY_MODELS = _body_models()


@pytest.fixture
def world(settings: Settings, db: Engine) -> Iterator[FuzzWorld]:
    with (
        serving(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as http,
    ):
        world = FuzzWorld(http, Logins(http), db)  # type: ignore[arg-type]
        world.base_url = base_url
        registered = register_customer(http, world.headers[Role.SALES], seed=7)
        world.customer_id, world.phone = registered.id, registered.body["phone"]
        yield world


@pytest.fixture
def outcomes() -> Iterator[dict[str, set[int]]]:
    """The statuses each operation answered in this test's run; some must have succeeded."""
    seen: dict[str, set[int]] = defaultdict(set)
    yield seen
    for label in sorted(MUST_SUCCEED & seen.keys()):
        assert any(200 <= status < 300 for status in seen[label]), (
            f"{label}: no generated request got past validation ({sorted(seen[label])})"
        )


@pytest.mark.parametrize("backend", FUZZ_BACKENDS, indirect=True)
@FUZZ_SETTINGS
@schema.parametrize()
@schema.given(grounded=st.booleans(), role=st.sampled_from(ROLES), admitted=st.booleans())
def test_any_request_gets_a_documented_answer(
    case: Case,
    grounded: bool,
    role: Role,
    admitted: bool,
    world: FuzzWorld,
    outcomes: dict[str, set[int]],
) -> None:
    exercise(case, world, outcomes, role=role, admitted=admitted, grounded=grounded)


@pytest.mark.parametrize("backend", FUZZ_BACKENDS, indirect=True)
@FUZZ_SETTINGS
@examples_schema.parametrize()
def test_the_documented_examples_get_documented_answers(
    case: Case, world: FuzzWorld, outcomes: dict[str, set[int]]
) -> None:
    exercise(case, world, outcomes, role=ROLES[0], admitted=True, grounded=True)


def exercise(
    case: Case,
    world: FuzzWorld,
    outcomes: dict[str, set[int]],
    *,
    role: Role,
    admitted: bool,
    grounded: bool,
) -> None:
    """The case is sent as a role — when ``admitted``, one the operation admits — with that
    role's token; grounded cases (valid ones only: grounding must not repair what a negative
    case broke on purpose) get the role's valid context and real ids, the others the context
    headers they did not generate themselves."""
    operation = world.operation(case)
    if case.operation.label in MUST_SUCCEED and _is_positive(case):
        grounded = admitted = True
    if admitted and operation is not None:
        role = _admitted_role(role, operation)
    call = CALLS.get((case.operation.method.upper(), case.operation.path))
    if grounded and _is_positive(case):
        headers = ground(case, world, role, operation)
    else:
        headers = dict(world.headers[role])
        if operation is not None and call is not None:
            generated = {name.lower() for name in case.headers or {}}
            context = context_headers(world, role, call, operation)
            headers.update({k: v for k, v in context.items() if k.lower() not in generated})

    response = case.call_and_validate(
        base_url=world.base_url, headers=headers, checks=CHECKS, timeout=60
    )

    outcomes[case.operation.label].add(response.status_code)
    if os.environ.get("SHOPVAULT_FUZZ_TRACE"):
        print(
            f"{role} {grounded} {_is_positive(case)} {response.status_code} {response.text[:300]}"
        )
    if response.status_code >= 400:
        assert_problem(response)
        assert_no_echo(case, response)
    else:
        _remember(case)


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    with serving(create_app(settings)) as base_url:
        yield base_url


@pytest.mark.parametrize("backend", FUZZ_BACKENDS, indirect=True)
@hypothesis.settings(FUZZ_SETTINGS, max_examples=5)
@unauthenticated_schema.parametrize()
def test_without_a_token_every_request_is_401(case: Case, server: str) -> None:
    response = case.call_and_validate(base_url=server, checks=CHECKS, timeout=60)
    expected = 401
    if case.method.upper() != case.operation.method.upper():
        expected = 405  # the coverage phase also tries methods the path does not allow
    assert response.status_code == expected, response.text
    if expected == 401:
        assert header(response, "www-authenticate") == "Bearer"
    assert_problem(response)
    assert_no_echo(case, response)


def _is_positive(case: Case) -> bool:
    meta = case.meta
    return meta is None or not meta.generation.mode.is_negative


def _admitted_role(drawn: Role, operation: Operation) -> Role:
    """A role the operation admits under some purpose, chosen by the drawn one."""
    admitted = admitted_roles(operation)
    return admitted[ROLES.index(drawn) % len(admitted)] if admitted else drawn


def ground(case: Case, world: FuzzWorld, role: Role, operation: Operation | None) -> Headers:
    """Real ids in the path, the role's valid context in the headers, and what the schema
    cannot say filled in in the body."""
    key = (case.operation.method.upper(), case.operation.path)
    call = CALLS.get(key)
    if call is not None:
        ids = call.ids(world)
        for name in case.path_parameters or {}:
            if name in ids:
                case.path_parameters[name] = ids[name]
    for name in list(case.headers or {}):
        if name.lower() in {header.lower() for header in ACCESS_HEADERS}:
            del case.headers[name]
    if isinstance(case.body, dict):
        _fill_body(case.operation.label, case.body, world)
        if call is not None and call.body is not None:
            _repair(case.body, _BODY_MODELS.get(key), call.body(world, role))
    if operation is None or call is None:
        return dict(world.headers[role])
    return context_headers(world, role, call, operation)


def _fill_body(label: str, body: dict[str, Any], world: FuzzWorld) -> None:
    """What the world knows and a schema cannot say."""
    if "customer_id" in body or "presence" in body:
        # The visit's customer, who proves presence with their real PIN (a generated guess
        # would soon lock the customer's PIN proofs for every later case).
        if "customer_id" in body:
            body["customer_id"] = world.customer_id
        body["presence"] = presence_of(world.customer_id)
    if label == "POST /customers/{customer_id}/messages":
        template = CATALOG.get(str(body.get("template")))
        if template is not None:
            body["variables"] = {
                v.name: _variable(v.type, v.max_length) for v in template.variables
            }


def _repair(body: dict[str, Any], model: type[BaseModel] | None, good: Any) -> None:
    """Fields whose rule the schema cannot state (a name without control characters, an email
    address, a document number of the chosen type, a birth date in the past …) take the value
    of a valid body when the generated one breaks it."""
    if model is None or not isinstance(good, dict):
        return
    for _ in range(3):
        try:
            model.model_validate(body)
        except ValidationError as invalid:
            fields = {str(error["loc"][0]) for error in invalid.errors() if error["loc"]}
            if not fields:
                return  # a rule across fields (a weak PIN): the 422 stands
            for name in fields:
                if name in good:
                    body[name] = good[name]
                else:
                    body.pop(name, None)
        else:
            return


def _variable(kind: VariableType, max_length: int) -> str | int:
    match kind:
        case VariableType.DATE:
            return "2026-12-25"
        case VariableType.TIME:
            return "10:30"
        case VariableType.NUMBER:
            return 3980
    return "ご案内"[:max_length]


def _remember(case: Case) -> None:
    """A PIN the customer changed is the one they know from now on."""
    body = case.body
    if (
        case.operation.label == "PATCH /customers/{customer_id}"
        and isinstance(body, dict)
        and isinstance(body.get("pin"), str)
    ):
        KNOWN_PINS[str(case.path_parameters["customer_id"])] = body["pin"]


Answer = httpx.Response | Response


def header(response: Answer, name: str) -> str | None:
    """A header of an httpx response or of schemathesis' (whose values are lists)."""
    value = response.headers.get(name.lower())
    if isinstance(value, list):
        return ", ".join(value)
    return value


def assert_problem(response: Answer) -> None:
    assert header(response, "content-type") == PROBLEM_MEDIA_TYPE, response.text
    body = response.json()
    assert all(
        isinstance(body.get(member), str) for member in PROBLEM_MEMBERS if member != "status"
    )
    assert body["status"] == response.status_code, body
    assert body["request_id"] == header(response, "x-request-id"), body


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def assert_no_echo(case: Case, response: Answer) -> None:
    """No value the case generated (body, query, path, headers), 8 characters or more and not
    documented vocabulary, appears in the refusal."""
    generated = (case.body, case.query, case.path_parameters, dict(case.headers or {}))
    sent = {
        value
        for part in generated
        for value in _strings(part)
        if len(value) >= ECHO_MIN_LENGTH and value not in VOCABULARY
    }
    echoed = sorted(value for value in sent if value in response.text)
    assert not echoed, f"{response.status_code} repeats what was sent: {echoed!r}"


# --- what the fuzzer found, pinned ----------------------------------------------------------


def test_a_body_that_is_not_utf8_is_refused_as_invalid(client: TestClient) -> None:
    # Not JSON (RFC 8259 text is UTF-8): FastAPI answered an undeclared, generic 400.
    response = client.post(
        "/auth/password",
        content=b'{"current": "\xe9t\xe9", "new": "correct-horse-battery"}',
        headers={**login(client, cast.MANAGER), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert_problem(response)
    assert response.json()["type"] == "/problems/validation"
    assert response.json()["errors"] == [
        {"loc": ["body"], "type": "body_invalid", "msg": "The body could not be decoded."}
    ]


@pytest.mark.parametrize(
    ("path", "request_kwargs"),
    [
        # Idempotency-Key that is not 8-128 safe characters: 400.
        ("/visits", {"json": {"type": "inquiry"}, "headers": {"Idempotency-Key": "short"}}),
        # X-Terminal-Id that is not 1-64 safe characters: 400.
        (
            "/auth/token",
            {
                "data": {"grant_type": "password", "username": "x", "password": "y"},
                "headers": {"X-Terminal-Id": "no spaces allowed"},
            },
        ),
        # Wrong current password: 403.
        ("/auth/password", {"json": {"current": "not-it", "new": "a-long-new-password"}}),
    ],
)
def test_refusals_the_fuzzer_met_are_documented(
    client: TestClient, path: str, request_kwargs: dict[str, Any]
) -> None:
    kwargs = dict(request_kwargs)  # shared by both backends' runs: not to be consumed
    headers = {**login(client, cast.MANAGER), **kwargs.pop("headers", {})}
    response = client.post(path, headers=headers, **kwargs)
    assert response.status_code in {400, 403}, response.text
    assert_problem(response)
    assert str(response.status_code) in DOCUMENT["paths"][path]["post"]["responses"]


@pytest.mark.parametrize("name", ["店\u0000舗", "店\u001d舗", "店\u009f舗"])
def test_a_name_with_a_control_character_is_refused(client: TestClient, name: str) -> None:
    # PostgreSQL cannot store NUL in text: the deep fuzz met it as a 503 on POST /stores.
    body = {"code": "S099", "name": name, "opening_hours": {"open": "10:00", "close": "20:00"}}
    response = client.post("/stores", json=body, headers=login(client, cast.ADMIN))
    assert response.status_code == 422, response.text
    assert_problem(response)
    assert response.json()["errors"][0]["loc"] == ["body", "name"]
