"""Logging in and out, throttling, password change, and tokens that stop working at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jose import jwt
from sqlalchemy import Engine, text

from app.client_address import client_address, limit_key
from app.config import Settings
from app.main import create_app
from tests import cast
from tests.conftest import SettingsFactory, login, login_client

Headers = Callable[..., dict[str, str]]


def _password_form(login_name: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": login_name, "password": password}


def _claims(token_response: dict[str, Any]) -> dict[str, Any]:
    return dict(jwt.get_unverified_claims(token_response["access_token"]))


def _events(db: Engine, where: str = "1=1", **params: Any) -> list[dict[str, Any]]:
    query = (
        "SELECT actor, actor_id, role, store, terminal, action, resource, outcome, denial,"
        f" request_id FROM access_event WHERE {where} ORDER BY at, chain, seq"
    )
    with db.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(text(query), params)]


@pytest.fixture
def app_client(make_settings: SettingsFactory) -> Iterator[Callable[..., TestClient]]:
    """A client of an app built with overridden settings, optionally from a chosen peer address."""
    opened: list[TestClient] = []

    def open_client(peer: str = "testclient", **overrides: Any) -> TestClient:
        test_client = TestClient(create_app(make_settings(**overrides)), client=(peer, 50000))
        opened.append(test_client.__enter__())
        return test_client

    yield open_client
    for test_client in opened:
        test_client.__exit__(None, None, None)


# --- logging in -----------------------------------------------------------------------------


def test_staff_login(client: TestClient, db: Engine) -> None:
    response = client.post(
        "/auth/token",
        data=_password_form(cast.SALES.login, cast.SALES.password),
        headers={"X-Terminal-Id": "POS-S001-03"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    claims = _claims(body)
    for name in ("sub", "role", "store", "iss", "aud", "iat", "exp", "jti"):
        assert name in claims, name
    assert claims["role"] == "sales"
    assert claims["store"] == "S001"
    assert claims["iss"] == "shopvault"
    assert claims["aud"] == "shopvault-api"
    assert claims["exp"] - claims["iat"] == 900
    assert claims["term"] == "POS-S001-03"
    assert "password" not in str(claims)

    events = _events(db, "action = 'login'")
    assert len(events) == 1
    event = events[0]
    assert event["actor"] == "sales1"
    assert event["actor_id"] == claims["sub"]
    assert event["role"] == "sales"
    assert event["store"] == "S001"
    assert event["terminal"] == "POS-S001-03"
    assert event["outcome"] == "allowed"
    assert event["request_id"] == response.headers["x-request-id"]


def test_terminal_travels_into_later_events(client: TestClient, db: Engine) -> None:
    headers = login(client, cast.SALES, terminal="POS-7")
    assert client.post("/auth/logout", headers=headers).status_code == 204
    logout = _events(db, "resource = 'auth/logout'")
    assert [event["terminal"] for event in logout] == ["POS-7"]


def test_malformed_terminal_id_is_refused(client: TestClient, db: Engine) -> None:
    response = client.post(
        "/auth/token",
        data=_password_form(cast.SALES.login, cast.SALES.password),
        headers={"X-Terminal-Id": "POS 1; drop"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert _events(db) == []


def test_client_login(client: TestClient, db: Engine) -> None:
    response = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": cast.BILLING.name,
            "client_secret": cast.BILLING.secret,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    claims = _claims(body)
    for name in ("sub", "role", "iss", "aud", "iat", "exp", "jti"):
        assert name in claims, name
    assert claims["role"] == "billing_system"
    assert "store" not in claims
    events = _events(db, "action = 'login'")
    assert [(e["actor"], e["role"], e["outcome"]) for e in events] == [
        ("billing", "billing_system", "allowed")
    ]


def test_token_lifetime_follows_the_setting(app_client: Callable[..., TestClient]) -> None:
    client = app_client(token_ttl_seconds=120)
    response = client.post(
        "/auth/token", data=_password_form(cast.SALES.login, cast.SALES.password)
    )
    assert response.status_code == 200
    assert response.json()["expires_in"] == 120
    claims = _claims(response.json())
    assert claims["exp"] - claims["iat"] == 120


def test_every_login_gets_its_own_token_id(client: TestClient) -> None:
    first = client.post("/auth/token", data=_password_form(cast.SALES.login, cast.SALES.password))
    second = client.post("/auth/token", data=_password_form(cast.SALES.login, cast.SALES.password))
    assert _claims(first.json())["jti"] != _claims(second.json())["jti"]


# --- failures look the same whether or not the login exists ---------------------------------


def _without_request_id(response: Any) -> tuple[int, dict[str, Any], str | None, str]:
    body = dict(response.json())
    assert body.pop("request_id") == response.headers["x-request-id"]
    return (
        response.status_code,
        body,
        response.headers.get("www-authenticate"),
        response.headers["content-type"],
    )


def test_wrong_password_and_unknown_login_answer_alike(client: TestClient, db: Engine) -> None:
    wrong = client.post("/auth/token", data=_password_form(cast.SALES.login, "not-the-password"))
    unknown = client.post("/auth/token", data=_password_form("nobody-such", "not-the-password"))
    assert wrong.status_code == 401
    assert wrong.json()["type"] == "/problems/invalid-credentials"
    assert _without_request_id(wrong) == _without_request_id(unknown)
    assert "sales1" not in wrong.text and "nobody-such" not in unknown.text

    events = _events(db, "action = 'login'")
    assert len(events) == 2
    by_request = {event["request_id"]: event for event in events}
    known = by_request[wrong.headers["x-request-id"]]
    assert (known["actor"], known["outcome"], known["denial"]) == (
        "sales1",
        "denied",
        "invalid-credentials",
    )
    stranger = by_request[unknown.headers["x-request-id"]]
    # What was typed as a login is never stored: it may be a mistyped password or a customer's name.
    assert stranger["actor"] is None
    assert stranger["actor_id"] is None
    assert (stranger["outcome"], stranger["denial"]) == ("denied", "invalid-credentials")
    with db.connect() as connection:
        assert not connection.execute(
            text("SELECT count(*) FROM access_event WHERE actor = 'nobody-such'")
        ).scalar()


def test_wrong_client_secret_and_unknown_client_answer_alike(client: TestClient) -> None:
    def attempt(client_id: str) -> Any:
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": "wrong-secret",
        }
        return client.post("/auth/token", data=form)

    wrong, unknown = attempt(cast.BILLING.name), attempt("no-such-client")
    assert wrong.status_code == 401
    assert _without_request_id(wrong) == _without_request_id(unknown)


def test_inactive_staff_cannot_log_in(client: TestClient, db: Engine) -> None:
    with db.begin() as connection:
        connection.execute(text("UPDATE staff SET active = false WHERE login = 'sales1'"))
    inactive = client.post(
        "/auth/token", data=_password_form(cast.SALES.login, cast.SALES.password)
    )
    unknown = client.post("/auth/token", data=_password_form("nobody-such", cast.SALES.password))
    assert inactive.status_code == 401
    assert _without_request_id(inactive) == _without_request_id(unknown)


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({"json": {"grant_type": "password", "username": "sales1", "password": "x"}}, "json"),
        ({"data": {"username": "sales1", "password": "correct-horse-sales1"}}, "no grant"),
        ({"data": {"grant_type": "magic", "username": "sales1"}}, "unknown grant"),
        ({"data": {"grant_type": "password", "username": "sales1"}}, "no password"),
        ({"data": {"grant_type": "client_credentials", "client_id": "billing"}}, "no secret"),
        ({"data": {"grant_type": "password", "username": "x" * 300, "password": "y"}}, "long"),
        ({"content": b"\xff\xfe\x00garbage"}, "bytes"),
    ],
)
def test_malformed_login_form(client: TestClient, kwargs: dict[str, Any], label: str) -> None:
    response = client.post("/auth/token", **kwargs)
    assert response.status_code == 401, (label, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/invalid-credentials"
    assert "access_token" not in response.text


def test_password_grant_does_not_log_in_a_client(client: TestClient) -> None:
    form = _password_form(cast.BILLING.name, cast.BILLING.secret)
    assert client.post("/auth/token", data=form).status_code == 401


# --- throttling -----------------------------------------------------------------------------


def test_failures_are_throttled_per_login(
    app_client: Callable[..., TestClient], db: Engine
) -> None:
    # Behind a trusted proxy each attempt comes from another address: only the login's own
    # counter can stop the fourth.
    client = app_client("10.0.0.1", login_rate_limit="3/5minutes", trusted_proxies="10.0.0.0/8")
    for n in range(3):
        response = client.post(
            "/auth/token",
            data=_password_form(cast.SALES.login, "wrong-password"),
            headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
        )
        assert response.status_code == 401
    right = client.post(
        "/auth/token",
        data=_password_form(cast.SALES.login, cast.SALES.password),
        headers={"X-Forwarded-For": "203.0.113.99"},
    )
    assert right.status_code == 429
    assert right.headers["content-type"] == "application/problem+json"
    assert right.json()["type"] == "/problems/rate-limited"
    assert 1 <= int(right.headers["retry-after"]) <= 300
    assert "access_token" not in right.text
    # The throttled attempt is a denied attempt, and recorded as one.
    with db.connect() as connection:
        denials = (
            connection.execute(
                text(
                    "SELECT denial FROM access_event WHERE action = 'login' AND outcome = 'denied' "
                    "AND request_id = :rid"
                ),
                {"rid": right.headers["x-request-id"]},
            )
            .scalars()
            .all()
        )
    assert denials == ["rate-limited"]
    # Another member from the same addresses is not affected.
    other = client.post(
        "/auth/token",
        data=_password_form(cast.MANAGER.login, cast.MANAGER.password),
        headers={"X-Forwarded-For": "203.0.113.1"},
    )
    assert other.status_code == 200


def test_failures_are_throttled_per_address(app_client: Callable[..., TestClient]) -> None:
    client = app_client(login_rate_limit="3/5minutes")
    for name in ("nobody-1", "nobody-2", cast.MANAGER.login):
        response = client.post("/auth/token", data=_password_form(name, "wrong-password"))
        assert response.status_code == 401
    right = client.post("/auth/token", data=_password_form(cast.SALES.login, cast.SALES.password))
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) >= 1


def test_client_credential_failures_are_throttled(app_client: Callable[..., TestClient]) -> None:
    client = app_client(login_rate_limit="3/5minutes")

    def attempt(secret: str) -> Any:
        form = {
            "grant_type": "client_credentials",
            "client_id": cast.BILLING.name,
            "client_secret": secret,
        }
        return client.post("/auth/token", data=form)

    assert [attempt("wrong-secret").status_code for _ in range(3)] == [401] * 3
    right = attempt(cast.BILLING.secret)
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) >= 1


def test_untrusted_peer_cannot_dodge_the_limit_with_forwarded_for(
    app_client: Callable[..., TestClient],
) -> None:
    client = app_client("198.51.100.7", login_rate_limit="3/5minutes")
    for n in range(3):
        response = client.post(
            "/auth/token",
            data=_password_form(f"nobody-{n}", "wrong-password"),
            headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
        )
        assert response.status_code == 401
    right = client.post(
        "/auth/token",
        data=_password_form(cast.SALES.login, cast.SALES.password),
        headers={"X-Forwarded-For": "203.0.113.200"},
    )
    assert right.status_code == 429


def test_spoofed_hops_before_a_trusted_proxy_do_not_change_the_address(
    app_client: Callable[..., TestClient],
) -> None:
    # The proxy appends the address it saw; whatever the client wrote before that is ignored.
    client = app_client("10.0.0.1", login_rate_limit="3/5minutes", trusted_proxies="10.0.0.0/8")
    for n in range(3):
        response = client.post(
            "/auth/token",
            data=_password_form(f"nobody-{n}", "wrong-password"),
            headers={"X-Forwarded-For": f"192.0.2.{n + 1}, 203.0.113.5"},
        )
        assert response.status_code == 401
    same_client = client.post(
        "/auth/token",
        data=_password_form(cast.SALES.login, cast.SALES.password),
        headers={"X-Forwarded-For": "192.0.2.77, 203.0.113.5, 10.0.0.9"},
    )
    assert same_client.status_code == 429
    another_client = client.post(
        "/auth/token",
        data=_password_form(cast.SALES.login, cast.SALES.password),
        headers={"X-Forwarded-For": "203.0.113.6"},
    )
    assert another_client.status_code == 200


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("198.51.100.7", ["203.0.113.1"], "", "198.51.100.7"),
        ("198.51.100.7", ["203.0.113.1"], "10.0.0.0/8", "198.51.100.7"),
        ("10.0.0.1", ["203.0.113.1"], "10.0.0.0/8", "203.0.113.1"),
        ("10.0.0.1", ["192.0.2.9, 203.0.113.1, 10.0.0.2"], "10.0.0.0/8", "203.0.113.1"),
        ("10.0.0.1", [], "10.0.0.0/8", "10.0.0.1"),
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.0/8", "10.0.0.3"),
        ("::1", ["2001:db8::5"], "::1/128", "2001:db8::5"),
        ("testclient", ["203.0.113.1"], "10.0.0.0/8", "testclient"),
        (None, ["203.0.113.1"], "10.0.0.0/8", "unknown"),
        # Several header lines are one list: the last line holds the nearest hops.
        ("10.0.0.1", ["192.0.2.9", "203.0.113.1, 10.0.0.2"], "10.0.0.0/8", "203.0.113.1"),
        ("10.0.0.1", ["203.0.113.1, 10.0.0.2", "10.0.0.3"], "10.0.0.0/8", "203.0.113.1"),
        ("10.0.0.1", ["192.0.2.9, 203.0.113.1", ""], "10.0.0.0/8", "203.0.113.1"),
        # A spoofed entry in an earlier line does not help a client behind two proxies.
        ("10.0.0.1", ["6.6.6.6", "203.0.113.1", "10.0.0.2"], "10.0.0.0/8", "203.0.113.1"),
        ("::ffff:10.0.0.1", ["203.0.113.1"], "10.0.0.0/8", "203.0.113.1"),
    ],
)
def test_client_address(
    peer: str | None, forwarded: list[str], trusted: str, expected: str
) -> None:
    networks = Settings(trusted_proxies=trusted).trusted_proxy_networks
    assert client_address(peer, forwarded, networks) == expected


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.1", "203.0.113.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.1", "203.0.113.1"),
        ("testclient", "testclient"),
    ],
)
def test_ipv6_addresses_are_limited_per_64(address: str, key: str) -> None:
    assert limit_key(address) == key


def test_successful_logins_are_not_throttled(app_client: Callable[..., TestClient]) -> None:
    client = app_client(login_rate_limit="3/5minutes")
    for _ in range(5):
        form = _password_form(cast.SALES.login, cast.SALES.password)
        assert client.post("/auth/token", data=form).status_code == 200


# --- logout ---------------------------------------------------------------------------------


def test_logout_revokes_only_that_token(client: TestClient, db: Engine) -> None:
    first = login(client, cast.SALES)
    second = login(client, cast.SALES)
    assert client.post("/auth/logout", headers=first).status_code == 204
    after = client.get("/auth/me", headers=first)
    assert after.status_code == 401
    assert after.headers["content-type"] == "application/problem+json"
    assert client.post("/auth/logout", headers=first).status_code == 401
    assert client.get("/auth/me", headers=second).status_code == 200
    with db.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM revoked_token")).scalar() == 1
    assert [e["outcome"] for e in _events(db, "resource = 'auth/logout'")] == ["allowed"]


def test_client_logout(client: TestClient) -> None:
    headers = login_client(client, cast.FRAUD)
    assert client.post("/auth/logout", headers=headers).status_code == 204
    assert client.get("/auth/me", headers=headers).status_code == 401


# --- changing one's password ----------------------------------------------------------------


def test_password_change_with_wrong_current(client: TestClient, db: Engine) -> None:
    headers = login(client, cast.SALES)
    response = client.post(
        "/auth/password",
        json={"current": "not-my-password", "new": "a-brand-new-passphrase"},
        headers=headers,
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    denied = _events(db, "resource = 'auth/password'")
    assert [(e["actor"], e["outcome"]) for e in denied] == [("sales1", "denied")]
    # Nothing changed: the token and the old password still work.
    assert client.get("/auth/me", headers=headers).status_code == 200
    login(client, cast.SALES)


@pytest.mark.parametrize("new", ["short-pw", "my-sales1-passphrase", "MY-SALES1-PASSPHRASE"])
def test_password_change_refuses_weak_passwords(client: TestClient, new: str) -> None:
    headers = login(client, cast.SALES)
    response = client.post(
        "/auth/password", json={"current": cast.SALES.password, "new": new}, headers=headers
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert new not in response.text
    assert client.get("/auth/me", headers=headers).status_code == 200


def test_password_change(client: TestClient, db: Engine) -> None:
    older = login(client, cast.SALES)
    current = login(client, cast.SALES, terminal="POS-2")
    colleague = login(client, cast.MANAGER)
    new_password = "a-brand-new-passphrase"
    response = client.post(
        "/auth/password",
        json={"current": cast.SALES.password, "new": new_password},
        headers=current,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert _claims(body)["term"] == "POS-2"
    fresh = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/auth/me", headers=fresh).status_code == 200
    assert client.get("/auth/me", headers=current).status_code == 401
    assert client.get("/auth/me", headers=older).status_code == 401
    assert client.get("/auth/me", headers=colleague).status_code == 200

    old_login = client.post("/auth/token", data=_password_form("sales1", cast.SALES.password))
    assert old_login.status_code == 401
    new_login = client.post("/auth/token", data=_password_form("sales1", new_password))
    assert new_login.status_code == 200
    with db.connect() as connection:
        stored = connection.execute(
            text("SELECT password_hash FROM staff WHERE login = 'sales1'")
        ).scalar_one()
    assert new_password not in stored and stored.startswith("$argon2")
    changed = _events(db, "resource = 'auth/password'")
    assert [(e["actor"], e["outcome"]) for e in changed] == [("sales1", "allowed")]


def test_clients_have_no_password(client: TestClient) -> None:
    headers = login_client(client, cast.BILLING)
    response = client.post(
        "/auth/password",
        json={"current": cast.BILLING.secret, "new": "a-brand-new-passphrase"},
        headers=headers,
    )
    assert response.status_code == 403


def test_password_change_needs_a_token(client: TestClient) -> None:
    response = client.post(
        "/auth/password", json={"current": "whatever-it-is", "new": "a-brand-new-passphrase"}
    )
    assert response.status_code == 401


# --- who am I -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "store"),
    [(cast.SALES, "S001"), (cast.MANAGER_OTHER_STORE, "S002"), (cast.AUDITOR, None)],
)
def test_me_for_staff(
    client: TestClient, db: Engine, member: cast.Member, store: str | None
) -> None:
    response = client.get("/auth/me", headers=login(client, member))
    assert response.status_code == 200
    with db.connect() as connection:
        staff_id = connection.execute(
            text("SELECT id FROM staff WHERE login = :login"), {"login": member.login}
        ).scalar_one()
    assert response.json() == {
        "id": staff_id,
        "login": member.login,
        "role": member.role,
        "store": store,
        "password_change_required": False,
    }


def test_me_for_a_client(client: TestClient) -> None:
    response = client.get("/auth/me", headers=login_client(client, cast.FRAUD))
    assert response.status_code == 200
    body = response.json()
    assert (body["login"], body["role"], body["store"]) == ("fraud", "fraud_system", None)


# --- tokens stop working when the holder changes --------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        "active = false",
        "active = false, auth_epoch = auth_epoch + 1",
        "auth_epoch = auth_epoch + 1",
        "role = 'manager'",
        "store_id = (SELECT id FROM store WHERE code = 'S002')",
    ],
)
def test_staff_change_locks_out_existing_tokens(
    client: TestClient, db: Engine, change: str
) -> None:
    headers = login(client, cast.SALES)
    bystander = login(client, cast.TECHNICIAN)
    assert client.get("/auth/me", headers=headers).status_code == 200
    with db.begin() as connection:
        connection.execute(text(f"UPDATE staff SET {change} WHERE login = 'sales1'"))
    assert client.get("/auth/me", headers=headers).status_code == 401
    assert client.post("/auth/logout", headers=headers).status_code == 401
    assert client.get("/auth/me", headers=bystander).status_code == 200


@pytest.mark.parametrize(
    "change", ["active = false", "auth_epoch = auth_epoch + 1", "role = 'fraud_system'"]
)
def test_client_change_locks_out_existing_tokens(
    client: TestClient, db: Engine, change: str
) -> None:
    headers = login_client(client, cast.BILLING)
    with db.begin() as connection:
        connection.execute(text(f"UPDATE system_client SET {change} WHERE name = 'billing'"))
    assert client.get("/auth/me", headers=headers).status_code == 401


def test_deleted_staff_token_is_refused(client: TestClient, db: Engine) -> None:
    headers = login(client, cast.TECHNICIAN)
    with db.begin() as connection:
        connection.execute(text("DELETE FROM staff WHERE login = 'tech1'"))
    assert client.get("/auth/me", headers=headers).status_code == 401
