"""Mass assignment and excessive exposure (OWASP API3:2023), for every route that takes a body.

A request body names only what the caller may set: a field the contract does not name — above
all the ones a caller would like to set (``role``, ``store``, ``id``, ``fields``, ``hash``,
``sender``…) — is refused with ``422``, at the top level and in every nested object, and the
request changes nothing and discloses nothing. Each body starts from the valid one the route ×
role matrix test sends (``tests/test_route_matrix.py``), as a role the route admits, with that
role's context, so that the one field added is the only reason for the refusal.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.access.deps import operation_of
from app.main import create_app
from app.roles import Role
from tests.access_log import events_of
from tests.conftest import SettingsFactory
from tests.test_route_matrix import (
    CALLS,
    SELF_SERVICE,
    Logins,
    World,
    _routes,
    admitted_roles,
    context_headers,
)
from tests.world import register_customer

# What a caller would like to set, and what the service alone decides.
COVETED = (
    "role",
    "store",
    "id",
    "fields",
    "hash",
    "prev_hash",
    "sender",
    "from",
    "customer_id",
    "pending_approval",
    "review_required",
    "outcome",
    "created_at",
    "retain_until",
    "auth_epoch",
    "is_admin",
)
UNKNOWN = "an_unknown_field"
PLANTED = "planted-by-mass-assignment"


def _document(client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _objects(document: dict[str, Any], schema: dict[str, Any], seen: set[str]) -> list[str]:
    """Names of the object schemas reachable from ``schema`` that leave unknown members open."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return []
        seen.add(name)
    schema = _resolve(document, schema)
    open_ones = []
    if "properties" in schema and schema.get("additionalProperties") is not False:
        open_ones.append(str(schema.get("title", schema)))
    children = [
        *schema.get("properties", {}).values(),
        *schema.get("anyOf", []),
        *schema.get("oneOf", []),
        *schema.get("allOf", []),
    ]
    if isinstance(schema.get("items"), dict):
        children.append(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        children.append(schema["additionalProperties"])
    for child in children:
        open_ones.extend(_objects(document, child, seen))
    return open_ones


def test_every_request_body_refuses_unknown_members(client: TestClient) -> None:
    """In the document: each request body object, nested ones included, is closed
    (``additionalProperties: false``), so a client reads there what the service refuses."""
    document = _document(client)
    open_bodies = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media_type, body in content.items():
                for name in _objects(document, body["schema"], set()):
                    open_bodies.append(f"{method.upper()} {path} ({media_type}): {name}")
    # The token endpoint is OAuth2's form, whose unknown parameters RFC 6749 says to ignore.
    assert open_bodies == [
        "POST /auth/token (application/x-www-form-urlencoded): Body_issue_token_auth_token_post"
    ]


def _json_body_routes(client: TestClient) -> list[tuple[str, str]]:
    document = _document(client)
    return sorted(
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    )


def _declared(client: TestClient, method: str, path: str) -> set[str]:
    document = _document(client)
    operation = document["paths"][path][method.lower()]
    schema = _resolve(document, operation["requestBody"]["content"]["application/json"]["schema"])
    return set(schema.get("properties", {}))


def _nested_paths(body: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where a nested object of the body is (not free-form maps such as template variables)."""
    found = []
    if isinstance(body, dict):
        for key, value in body.items():
            if isinstance(value, dict) and key != "variables":
                found.append((*prefix, key))
                found.extend(_nested_paths(value, (*prefix, key)))
    return found


def _with(body: dict[str, Any], where: tuple[str, ...], name: str) -> dict[str, Any]:
    planted = copy.deepcopy(body)
    target = planted
    for key in where:
        target = target[key]
    target[name] = PLANTED if name != "fields" else ["document_number"]
    return planted


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # refused before any query
def test_a_member_no_one_may_set_is_refused_everywhere(
    make_settings: SettingsFactory, db: Engine
) -> None:
    with TestClient(create_app(make_settings(message_daily_cap=1000))) as client:
        _walk(client, World(client, Logins(client), db))


def _walk(client: TestClient, world: World) -> None:
    customer = register_customer(client, world.headers[Role.SALES], seed=31)
    world.customer_id, world.phone = customer.id, customer.body["phone"]
    routes = _routes(client)
    failures: list[str] = []
    for method, path in _json_body_routes(client):
        if (method, path) in SELF_SERVICE:
            continue
        operation = operation_of(routes[(method, path)])
        assert operation is not None
        call = CALLS[(method, path)]
        assert call.body is not None, f"{method} {path}: the matrix sends no body"
        role = admitted_roles(operation)[0]
        declared = _declared(client, method, path)
        good = call.body(world, role)
        spots = [((), name) for name in (*COVETED, UNKNOWN) if name not in declared]
        spots += [(where, "role") for where in _nested_paths(good)]
        for where, name in spots:
            target = path.format(**call.ids(world))
            response = client.request(
                method,
                target,
                json=_with(good, where, name),
                headers=context_headers(world, role, call, operation),
            )
            label = f"{method} {path} with {'.'.join((*where, name))}"
            if response.status_code != 422:
                failures.append(f"{label}: {response.status_code} {response.text[:120]}")
                continue
            locations = [error["loc"] for error in response.json()["errors"]]
            # (A discriminated union names its variant between the two: presence.pin.role.)
            if not any(
                loc[: len(where) + 1] == ["body", *where] and loc[-1] == name for loc in locations
            ):
                failures.append(f"{label}: refused for {locations}")
            if PLANTED in response.text:
                failures.append(f"{label}: the refusal repeats the planted value")
            if any(event.outcome == "allowed" for event in events_of(world.db, response)):
                failures.append(f"{label}: an allowed event was recorded")
    assert not failures, "\n".join(failures)
