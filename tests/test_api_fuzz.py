"""Property-based fuzzing of the whole HTTP API with schemathesis.

Requests are generated from our own OpenAPI document, valid and invalid ones, and sent through
the real app to a real database. Whatever is sent, the answer is one the document declares (status,
media type, schema), never a server error; every refusal is ``application/problem+json`` with its
required members; and no refusal repeats a value the caller sent (it may be personal data).

Schemathesis' pytest plugin drives generation (one test per operation, fresh database each); we
send each case through the test's own ``TestClient`` so that the app runs its lifespan once, on
one event loop, like everywhere else in the suite. (``schemathesis.pytest.from_fixture`` would
let the schema come from a fixture, but its runner touches ``Node._nodeid``, which pytest 9.2 no
longer has; the document is therefore built once at collection, from an app that never starts.)
"""

from __future__ import annotations

import ast
import json
import secrets
import tempfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import app
from app.config import Settings
from app.keys import encode_key
from app.main import create_app
from tests import cast
from tests.conftest import SettingsFactory, login
from tests.world import Registered, add_contract, open_visit, reason_header, register_customer

Headers = dict[str, str]
Case = schemathesis.Case[Any]

APP_SOURCE = Path(app.__file__).parent

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_MEMBERS = ("type", "title", "status", "detail", "request_id")
ECHO_MIN_LENGTH = 8
ADMIN_TAG = "administration"
ACCESS_HEADERS = ("X-Access-Purpose", "X-Access-Reason", "X-Visit-Id")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# The manager's access context: by default a purpose that discloses everything, with a reason;
# the operations below need another purpose, and the visit that justifies it.
DEFAULT_CONTEXT = ("subject_request", None)
GROUNDED_CONTEXT = {
    "POST /customers": ("contract", "unattached"),
    "POST /customers/{customer_id}/contracts": ("contract", "customer"),
    "PATCH /contracts/{contract_id}": ("contract", "customer"),
}
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document. It depends on no setting and no row, so it is built once at
    collection, by an app that is never started and never connects."""

    def key() -> SecretStr:
        return SecretStr(encode_key(secrets.token_bytes(32)))

    unused = Path(tempfile.gettempdir()) / "shopvault-fuzz-unused"
    settings = Settings(
        data_dir=unused,
        database_url=f"sqlite:///{unused / 'never-opened.db'}",
        jwt_key=key(),
        master_key=key(),
        index_key=key(),
    )
    return create_app(settings).openapi()


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
CONFIG = schemathesis.Config.from_dict(
    {
        # Coverage (boundary values, each constraint broken in turn) and fuzzing (random cases,
        # valid and invalid); our document has no examples to replay.
        "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False}},
        # The token is ours to set; a generated Authorization header would only ever be a 401.
        "generation": {"mode": "all", "with-security-parameters": False},
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(
    # Prometheus text is not a JSON schema's business; logging out would revoke the token every
    # later case uses (it is fuzzed unauthenticated below).
    path=["/metrics", "/auth/logout"]
)
unauthenticated_schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).include(
    path=["/auth/me", "/auth/logout", "/stores", "/visits", "/customers/{customer_id}"]
)


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    # The fuzzer searches far more often than a shop would; a 429 would hide the search route.
    return make_settings(search_rate_limit="100000/minute")


class World:
    """A manager and an admin, and real rows that grounded cases point at, each made on first
    use (an admin route needs no customer)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    @cached_property
    def manager(self) -> Headers:
        return login(self.client, cast.MANAGER)

    @cached_property
    def admin(self) -> Headers:
        return login(self.client, cast.ADMIN)

    @cached_property
    def customer(self) -> Registered:
        """Registered in a new-contract visit that stays open (contract operations use it)."""
        return register_customer(self.client, self.manager, seed=7)

    @cached_property
    def unattached_visit(self) -> str:
        """An open new-contract visit with no customer yet (registration uses it)."""
        return open_visit(self.client, self.manager)

    @cached_property
    def staff_id(self) -> str:
        staff = self.client.get("/staff", headers=self.admin).json()["items"]
        return str(next(row["id"] for row in staff if row["login"] == cast.SALES.login))

    @cached_property
    def client_id(self) -> str:
        clients = self.client.get("/clients", headers=self.admin).json()["items"]
        return str(next(row["id"] for row in clients if row["name"] == cast.BILLING.name))

    def real_id(self, parameter: str) -> str | None:
        """The id of a real row for a path parameter. Visits, contracts and forms are new for each
        case, so that one case closing, terminating or disposing of them does not decide the
        answers to the next."""
        match parameter:
            case "customer_id":
                return self.customer.id
            case "visit_id":
                return open_visit(self.client, self.manager, "repair", self.customer.id)
            case "contract_id":
                contract = add_contract(
                    self.client, self.manager, self.customer.id, self.customer.visit_id
                )
                return str(contract["id"])
            case "document_id":
                return self.form_id()
            case "staff_id":
                return self.staff_id
            case "client_id":
                return self.client_id
        return None

    def form_id(self) -> str:
        """A paper form of the customer, new for each case (a case may dispose of it)."""
        response = self.client.post(
            f"/visits/{self.customer.visit_id}/documents",
            json={"form_type": "other", "storage_location": "cabinet-1"},
            headers=self.manager,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def visit(self, name: str) -> str:
        return self.customer.visit_id if name == "customer" else self.unattached_visit


@pytest.fixture
def world(client: TestClient) -> World:
    return World(client)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@FUZZ_SETTINGS
@schema.parametrize()
@schema.given(grounded=st.booleans())
def test_any_request_gets_a_documented_answer(case: Case, grounded: bool, world: World) -> None:
    """Half the cases are *grounded*: path ids name real rows and the access headers form a valid
    manager context (admin routes: the admin), so generated bodies reach the services; the others
    are sent as generated, with a purpose and a reason added where the operation takes them and
    the case has none."""
    admin_route = ADMIN_TAG in (case.operation.tags or [])
    headers = dict(world.admin if admin_route else world.manager)
    declared = {parameter.name for parameter in case.operation.headers}
    if grounded:
        ground(case, world)
        context = GROUNDED_CONTEXT.get(case.operation.label, DEFAULT_CONTEXT)
        headers.update(access_headers(world, declared, *context))
    else:
        generated = {name.lower() for name in case.headers or {}}
        defaults = access_headers(world, declared, *DEFAULT_CONTEXT)
        headers.update({k: v for k, v in defaults.items() if k.lower() not in generated})

    response = send(world.client, case, headers)

    case.validate_response(response, checks=CHECKS, headers=headers)
    if response.status_code >= 400:
        assert_problem(response)
        assert_no_echo(case, response)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@hypothesis.settings(FUZZ_SETTINGS, max_examples=5)
@unauthenticated_schema.parametrize()
def test_without_a_token_every_request_is_401(case: Case, client: TestClient) -> None:
    response = send(client, case, {})

    case.validate_response(response, checks=CHECKS)
    expected = 401
    if case.method.upper() != case.operation.method.upper():
        expected = 405  # the coverage phase also tries methods the path does not allow
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert_problem(response)
    assert_no_echo(case, response)


def ground(case: Case, world: World) -> None:
    for name in case.path_parameters or {}:
        real = world.real_id(name)
        if real is not None:
            case.path_parameters[name] = real
    for name in list(case.headers or {}):
        if name.lower() in {header.lower() for header in ACCESS_HEADERS}:
            del case.headers[name]


def access_headers(world: World, declared: set[str], purpose: str, visit: str | None) -> Headers:
    """The access headers the operation takes: the purpose, and the visit or else a reason."""
    headers = {"X-Access-Purpose": purpose}
    if visit is not None:
        headers["X-Visit-Id"] = world.visit(visit)
    else:
        headers["X-Access-Reason"] = reason_header()
    return {name: value for name, value in headers.items() if name in declared}


def send(client: TestClient, case: Case, headers: Headers) -> httpx.Response:
    """The case as schemathesis puts it on the wire (``requests`` prepares it), sent through the
    test's own app; header values travel as latin-1 octets, as on a real connection."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    fields = ("method", "url", "headers", "params", "cookies", "data", "json", "files")
    prepared = requests.Request(**{key: kwargs[key] for key in fields if key in kwargs}).prepare()
    body = prepared.body
    response: httpx.Response = client.request(
        str(prepared.method),
        str(prepared.url),
        headers=[(name, _octets(value)) for name, value in prepared.headers.items()],
        content=body.encode() if isinstance(body, str) else body,
    )
    return response


def _octets(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def assert_problem(response: httpx.Response) -> None:
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE, response.text
    body = response.json()
    assert all(
        isinstance(body.get(member), str) for member in PROBLEM_MEMBERS if member != "status"
    )
    assert body["status"] == response.status_code, body
    assert body["request_id"] == response.headers["x-request-id"], body


def unparsable_body(response: httpx.Response) -> bool:
    if response.status_code != 422:
        return False
    errors = response.json().get("errors", [])
    return bool(errors) and all(e["type"] in {"json_invalid", "body_invalid"} for e in errors)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def assert_no_echo(case: Case, response: httpx.Response) -> None:
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
