"""Abuse of authentication (OWASP API2:2023), on every kind of route.

Each forged or stale token is built from a real one by changing one thing, and sent to routes of
every kind — the caller's own (``/auth/me``, a password change with a body), a customer read
with a valid purpose and visit, a search, a registration with a valid body, the store's visits,
administration — each of which answers ``2xx`` to the genuine token (checked first). Every
forgery is ``401`` with ``WWW-Authenticate: Bearer``, discloses nothing and records nothing in
the forger's name. A system client's genuine token on a staff route is a recorded ``403``.
(``tests/test_tokens.py`` checks the decoding itself, one change at a time, on ``/auth/me``.)
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from jose import jwt
from sqlalchemy import Engine, text

from app.config import Settings
from app.keys import decode_key
from tests import cast
from tests.access_log import events_of
from tests.conftest import login, login_client
from tests.world import Registered, customer_body, open_visit, register_customer

Headers = dict[str, str]
Forge = Callable[[str, dict[str, Any], bytes], str]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _json_b64(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _signed(claims: dict[str, Any], key: bytes, **headers: Any) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers=headers or None)


def _without(claims: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in claims.items() if key != name}


NOW = int(time.time())
FORGERIES: dict[str, Forge] = {
    "alg none": lambda _t, c, _k: f"{_json_b64({'alg': 'none', 'typ': 'JWT'})}.{_json_b64(c)}.",
    "signed with another key": lambda _t, c, _k: _signed(c, secrets.token_bytes(32)),
    "header asks for HS512": lambda _t, c, k: jwt.encode(c, k, algorithm="HS512"),
    "header asks for RS256": lambda _t, c, k: _relabelled(c, k, "RS256"),
    "expired": lambda _t, c, k: _signed({**c, "iat": NOW - 2000, "exp": NOW - 1000}, k),
    "not yet valid": lambda _t, c, k: _signed({**c, "nbf": int(time.time()) + 3600}, k),
    "no aud": lambda _t, c, k: _signed(_without(c, "aud"), k),
    "no iss": lambda _t, c, k: _signed(_without(c, "iss"), k),
    "no exp": lambda _t, c, k: _signed(_without(c, "exp"), k),
    "no sub": lambda _t, c, k: _signed(_without(c, "sub"), k),
    "wrong aud": lambda _t, c, k: _signed({**c, "aud": "another-api"}, k),
    "wrong iss": lambda _t, c, k: _signed({**c, "iss": "someone-else"}, k),
    "oversized": lambda _t, c, k: _signed({**c, "pad": "x" * 5000}, k),
    "kid pointing nowhere": lambda _t, c, k: _signed(c, k, kid="../../keys/nowhere"),
    "jku to fetch a key from": lambda _t, c, k: _signed(c, k, jku="http://127.0.0.1:9/k.json"),
    "role raised in the payload": lambda t, c, _k: _reassembled(t, {**c, "role": "manager"}),
    "another store in the payload": lambda t, c, _k: _reassembled(t, {**c, "store": "S002"}),
}


def _relabelled(claims: dict[str, Any], key: bytes, alg: str) -> str:
    import hashlib
    import hmac

    signing_input = f"{_json_b64({'alg': alg, 'typ': 'JWT'})}.{_json_b64(claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _reassembled(token: str, claims: dict[str, Any]) -> str:
    header, _payload, signature = token.split(".")
    return f"{header}.{_json_b64(claims)}.{signature}"


@dataclass(frozen=True)
class Route:
    method: str
    path: Callable[[Registered], str]
    headers: Callable[[Registered], Headers] = lambda _c: {}
    body: Callable[[Registered], Any] | None = None


ROUTES: dict[str, Route] = {
    "me": Route("GET", lambda _c: "/auth/me"),
    "customer read": Route(
        "GET",
        lambda c: f"/customers/{c.id}",
        lambda c: {"X-Access-Purpose": "contract", "X-Visit-Id": c.visit_id},
    ),
    "search": Route(
        "POST",
        lambda _c: "/customers/search",
        lambda _c: {"X-Access-Purpose": "contract"},
        lambda c: {"phone": c.body["phone"]},
    ),
    "visits": Route("GET", lambda _c: "/visits?status=open"),
    "registration": Route(
        "POST",
        lambda _c: "/customers",
        lambda c: {"X-Access-Purpose": "contract", "X-Visit-Id": c.view["_unattached"]},
        lambda _c: customer_body(seed=99),
    ),
}


@pytest.fixture
def jwt_key(settings: Settings) -> bytes:
    assert settings.jwt_key is not None
    return decode_key(settings.jwt_key.get_secret_value(), "jwt")


@pytest.fixture
def sales(client: TestClient) -> tuple[Headers, Registered]:
    headers = login(client, cast.SALES)
    customer = register_customer(client, headers, seed=98)
    customer.view["_unattached"] = open_visit(client, headers)
    return headers, customer


def _send(client: TestClient, route: Route, customer: Registered, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **route.headers(customer)}
    body = route.body(customer) if route.body is not None else None
    return client.request(route.method, route.path(customer), json=body, headers=headers)


def _actor_events(db: Engine, login_name: str) -> int:
    with db.connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM access_event WHERE actor = :actor"),
                {"actor": login_name},
            ).scalar_one()
        )


@pytest.mark.parametrize("route_name", sorted(ROUTES))
def test_every_forgery_is_401_on_every_kind_of_route(
    client: TestClient,
    db: Engine,
    jwt_key: bytes,
    sales: tuple[Headers, Registered],
    route_name: str,
) -> None:
    headers, customer = sales
    genuine = headers["Authorization"].removeprefix("Bearer ")
    claims = dict(jwt.get_unverified_claims(genuine))
    route = ROUTES[route_name]
    # The control: what makes each forgery fail is the one thing changed.
    control = _send(
        client, route, customer, _signed({**claims, "jti": secrets.token_hex(8)}, jwt_key)
    )
    assert 200 <= control.status_code < 300, control.text
    if route_name == "registration":  # that visit has its customer now
        customer.view["_unattached"] = open_visit(client, headers)

    before = _actor_events(db, cast.SALES.login)
    for name, forge in FORGERIES.items():
        response = _send(client, route, customer, forge(genuine, claims, jwt_key))
        assert response.status_code == 401, (name, response.text)
        assert response.headers["www-authenticate"] == "Bearer", name
        assert response.headers["content-type"] == "application/problem+json", name
        assert customer.body["name"].split(" ")[0] not in response.text, name
        assert events_of(db, response) == [], name
    assert _actor_events(db, cast.SALES.login) == before


def test_a_deactivated_members_token_is_401_everywhere_at_once(
    client: TestClient, db: Engine, sales: tuple[Headers, Registered]
) -> None:
    headers, customer = sales
    admin = login(client, cast.ADMIN)
    staff = client.get("/staff", headers=admin).json()["items"]
    member_id = next(row["id"] for row in staff if row["login"] == cast.SALES.login)
    token = headers["Authorization"].removeprefix("Bearer ")
    deactivated = client.patch(f"/staff/{member_id}", json={"active": False}, headers=admin)
    assert deactivated.status_code == 200, deactivated.text

    for name, route in ROUTES.items():
        response = _send(client, route, customer, token)
        assert response.status_code == 401, (name, response.text)
        assert customer.body["name"].split(" ")[0] not in response.text, name


@pytest.mark.parametrize("system", [cast.BILLING, cast.FRAUD], ids=["billing", "fraud"])
def test_a_system_clients_token_on_staff_routes_is_a_recorded_403(
    client: TestClient, db: Engine, sales: tuple[Headers, Registered], system: cast.Client
) -> None:
    _headers, customer = sales
    token = login_client(client, system)["Authorization"].removeprefix("Bearer ")
    for name in ("visits", "registration"):
        response = _send(client, ROUTES[name], customer, token)
        assert response.status_code == 403, (name, response.text)
        assert [event.outcome for event in events_of(db, response)] == ["denied"], name
