"""Every error is an RFC 9457 problem with a request id; nothing the caller sent is echoed back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.middleware import MAX_BODY_BYTES
from tests import cast

Headers = Callable[..., dict[str, str]]
PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}
MARKER = "090-1234-5678"
LONG_MARKER = "zq-unique-marker-7f3a9c41e2b84d06a5c3"


def assert_problem(response: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"].startswith("/problems/")
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    if slug is not None:
        assert body["type"] == f"/problems/{slug}"
    return body


def test_unknown_route(client: TestClient) -> None:
    assert_problem(client.get("/no/such/route"), 404, "not-found")
    assert_problem(client.post(f"/no-such/{MARKER}"), 404, "not-found")
    assert MARKER not in client.get(f"/x/{MARKER}").text


def test_wrong_method(client: TestClient) -> None:
    response = client.delete("/auth/me")
    body = assert_problem(response, 405)
    assert body["type"] != "/problems/not-found"
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({"method": "GET", "url": "/nowhere"}, 404),
        ({"method": "GET", "url": "/auth/me"}, 401),
        ({"method": "GET", "url": "/auth/me", "headers": {"Authorization": "Bearer x.y.z"}}, 401),
        ({"method": "POST", "url": "/auth/token", "data": {"grant_type": "password"}}, 401),
        ({"method": "POST", "url": "/auth/token", "content": b"x" * (MAX_BODY_BYTES + 1)}, 413),
    ],
)
def test_every_problem_has_the_common_members(
    client: TestClient, request_kwargs: dict[str, Any], status: int
) -> None:
    response = client.request(**request_kwargs)
    body = assert_problem(response, status)
    assert response.headers["cache-control"] == "no-store"
    assert body["request_id"]


def test_problems_from_authenticated_routes(client: TestClient, as_member: Headers) -> None:
    headers = as_member(cast.SALES)
    assert_problem(client.post("/auth/password", json={}, headers=headers), 422, "validation")
    wrong = {"current": "not-the-password", "new": "a-brand-new-passphrase"}
    assert_problem(client.post("/auth/password", json=wrong, headers=headers), 403)


def test_authentication_comes_before_body_validation(client: TestClient) -> None:
    response = client.post("/auth/password", json={"current": 1, "new": MARKER})
    assert_problem(response, 401, "unauthorized")
    assert MARKER not in response.text


def test_every_response_has_a_request_id(client: TestClient) -> None:
    for response in (client.get("/healthz"), client.get("/nowhere"), client.get("/auth/me")):
        assert response.headers["x-request-id"]
    first, second = client.get("/healthz"), client.get("/healthz")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_safe_request_id_is_echoed(client: TestClient, db: Engine) -> None:
    request_id = "pos-17.req_0001-abc"
    response = client.get("/nowhere", headers={"X-Request-Id": request_id})
    assert response.headers["x-request-id"] == request_id
    assert response.json()["request_id"] == request_id

    login = client.post(
        "/auth/token",
        data={"grant_type": "password", "username": "sales1", "password": cast.SALES.password},
        headers={"X-Request-Id": request_id},
    )
    assert login.headers["x-request-id"] == request_id
    with db.connect() as connection:
        recorded = connection.execute(text("SELECT request_id FROM access_event")).scalars().all()
    assert recorded == [request_id]


@pytest.mark.parametrize(
    "unsafe",
    ["short", "x" * 65, "<script>alert(1)</script>", "id with spaces ok?", "a/b/c/d/e/f/g/h", ""],
)
def test_unsafe_request_id_is_replaced(client: TestClient, unsafe: str) -> None:
    response = client.get("/nowhere", headers={"X-Request-Id": unsafe})
    replaced = response.headers["x-request-id"]
    assert replaced != unsafe
    assert len(replaced) == 36  # a fresh UUID
    assert response.json()["request_id"] == replaced
    if unsafe:
        assert unsafe not in response.text


@pytest.mark.parametrize(
    "body",
    [
        {"current": ["secret", MARKER], "new": {"phone": MARKER}},
        {"current": 9012345678, "new": LONG_MARKER * 10},
        {"current": LONG_MARKER, "new": "short", "phone": MARKER},
        {"current": LONG_MARKER, "new": None},
        [MARKER, LONG_MARKER],
        MARKER,
    ],
)
def test_validation_errors_locate_but_never_echo(
    client: TestClient, as_member: Headers, body: Any
) -> None:
    response = client.post("/auth/password", json=body, headers=as_member(cast.SALES))
    problem = assert_problem(response, 422, "validation")
    assert problem["errors"], problem
    for error in problem["errors"]:
        assert set(error) == {"loc", "type", "msg"}
        assert error["loc"][0] == "body"
    for leaked in (MARKER, LONG_MARKER, "9012345678", "secret"):
        assert leaked not in response.text


def test_validation_error_locations(client: TestClient, as_member: Headers) -> None:
    response = client.post(
        "/auth/password",
        json={"current": 12, "new": LONG_MARKER, "phone": MARKER},
        headers=as_member(cast.SALES),
    )
    errors = assert_problem(response, 422)["errors"]
    locations = {tuple(error["loc"]) for error in errors}
    assert ("body", "current") in locations
    assert ("body", "phone") in locations  # an unknown field: named, its value never shown


def test_malformed_json(client: TestClient, as_member: Headers) -> None:
    response = client.post(
        "/auth/password",
        content=b'{"current": "' + MARKER.encode() + b'", "new": ',
        headers={**as_member(cast.SALES), "Content-Type": "application/json"},
    )
    assert_problem(response, 422, "validation")
    assert MARKER not in response.text


def _big_json(size: int) -> bytes:
    filler = "x" * size
    return json.dumps({"current": filler, "new": MARKER}).encode()


def test_body_over_1_mib_is_refused_before_parsing(client: TestClient, as_member: Headers) -> None:
    headers = {**as_member(cast.SALES), "Content-Type": "application/json"}
    # Not even JSON: a parser would answer 422; the size check answers first.
    response = client.post("/auth/password", content=b"{" * (MAX_BODY_BYTES + 1), headers=headers)
    assert_problem(response, 413, "payload-too-large")
    response = client.post("/auth/password", content=_big_json(MAX_BODY_BYTES), headers=headers)
    assert_problem(response, 413, "payload-too-large")
    assert MARKER not in response.text


def test_body_at_1_mib_is_parsed(client: TestClient, as_member: Headers) -> None:
    headers = {**as_member(cast.SALES), "Content-Type": "application/json"}
    body = _big_json(0)
    padded = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    response = client.post("/auth/password", content=padded, headers=headers)
    # Parsed, then refused for its content (a 12-character minimum), not for its size.
    assert_problem(response, 422, "validation")


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"{" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


def test_streamed_body_over_1_mib_is_refused(client: TestClient, as_member: Headers) -> None:
    # No Content-Length: the limit is counted as the body arrives.
    headers = {**as_member(cast.SALES), "Content-Type": "application/json"}
    response = client.post("/auth/password", content=_chunks(MAX_BODY_BYTES + 1), headers=headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_problem(response, 413, "payload-too-large")


def test_streamed_form_over_1_mib_is_refused(client: TestClient) -> None:
    response = client.post(
        "/auth/token",
        content=_chunks(MAX_BODY_BYTES + 1),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 413, "payload-too-large")


def test_bad_content_length_is_refused(client: TestClient) -> None:
    response = client.post(
        "/auth/token",
        content=b"grant_type=password",
        headers={"Content-Length": str(MAX_BODY_BYTES * 4)},
    )
    assert_problem(response, 413, "payload-too-large")


def test_openapi_declares_problems(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" in responses, (path, method)
            for status, response in responses.items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        path,
                        method,
                        status,
                    )
