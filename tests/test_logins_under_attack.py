"""Logins under attack (SPEC): attempts are counted before the password is checked and forgiven
on success, per login and per client address; the same limit guards the current password of
POST /auth/password; the client address is read from X-Forwarded-For only behind trusted
proxies (right to left, over all header lines), IPv6 per /64; Argon2 never runs while the
request holds a database lock; auth_epoch is bumped in SQL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url

from app.admin import repository as admin_repository
from app.auth.passwords import ARGON2_NICENESS
from app.main import create_app
from app.models import Staff
from tests import cast
from tests.conftest import SettingsFactory, login

AsMember = Callable[..., dict[str, str]]


def _form(login_name: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": login_name, "password": password}


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every real Argon2 verification and hash the service runs, in order."""
    calls: list[str] = []
    verify, hash_ = PasswordHasher.verify, PasswordHasher.hash

    def counting_verify(self: PasswordHasher, *args: Any, **kwargs: Any) -> bool:
        calls.append("verify")
        return verify(self, *args, **kwargs)

    def counting_hash(self: PasswordHasher, *args: Any, **kwargs: Any) -> str:
        calls.append("hash")
        return hash_(self, *args, **kwargs)

    monkeypatch.setattr(PasswordHasher, "verify", counting_verify)
    monkeypatch.setattr(PasswordHasher, "hash", counting_hash)
    return calls


async def _burst(app: FastAPI, forms: list[dict[str, str]], peer: str) -> list[int]:
    """All the logins at once, through the ASGI app, from one client address."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            answers = await asyncio.gather(*(http.post("/auth/token", data=f) for f in forms))
    return [answer.status_code for answer in answers]


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_concurrent_guesses_check_at_most_the_limit(
    make_settings: SettingsFactory,
    request: pytest.FixtureRequest,
    argon2_calls: list[str],
    shared: bool,
) -> None:
    extra = request.getfixturevalue("redis_settings") if shared else {}
    app = create_app(make_settings(login_rate_limit="10/5minutes", **extra))
    guesses = [_form(cast.SALES.login, f"guess-number-{n}") for n in range(40)]

    statuses = asyncio.run(_burst(app, guesses, "198.51.100.7"))

    assert argon2_calls.count("verify") <= 10
    assert statuses.count(401) == argon2_calls.count("verify")
    assert statuses.count(429) == 40 - statuses.count(401)


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_two_processes_share_the_counters_through_redis(
    make_settings: SettingsFactory, redis_settings: dict[str, str], shared: bool
) -> None:
    """Two apps (as two API processes) with one Redis: their attempts add up."""
    settings = make_settings(login_rate_limit="3/5minutes", **(redis_settings if shared else {}))
    first, second = TestClient(create_app(settings)), TestClient(create_app(settings))
    with first, second:
        for client in (first, second, first):
            wrong = client.post("/auth/token", data=_form(cast.SALES.login, "wrong-password"))
            assert wrong.status_code == 401
        right = second.post("/auth/token", data=_form(cast.SALES.login, cast.SALES.password))
    assert right.status_code == (429 if shared else 200)


def test_successes_are_forgiven_and_failures_count(make_settings: SettingsFactory) -> None:
    with TestClient(create_app(make_settings(login_rate_limit="3/5minutes"))) as client:

        def attempt(password: str) -> int:
            return client.post("/auth/token", data=_form(cast.SALES.login, password)).status_code

        assert [attempt("wrong-password"), attempt("wrong-password")] == [401, 401]
        assert [attempt(cast.SALES.password) for _ in range(5)] == [200] * 5
        assert attempt("wrong-password") == 401
        assert attempt(cast.SALES.password) == 429


def test_the_current_password_is_guarded_by_the_login_limit(
    make_settings: SettingsFactory, db: Engine
) -> None:
    with TestClient(create_app(make_settings(login_rate_limit="3/5minutes"))) as client:
        headers = login(client, cast.SALES)

        def change(current: str) -> httpx.Response:
            body = {"current": current, "new": "a-brand-new-passphrase"}
            return client.post("/auth/password", json=body, headers=headers)

        # A login failure and the current password share the member's counter.
        assert client.post("/auth/token", data=_form("sales1", "wrong")).status_code == 401
        assert [change("wrong-current").status_code for _ in range(2)] == [403, 403]
        refused = change(cast.SALES.password)
        assert refused.status_code == 429
        assert refused.json()["type"] == "/problems/rate-limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert client.get("/auth/me", headers=headers).status_code == 200
    with db.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT actor, outcome, denial FROM access_event WHERE resource = 'auth/password'"
                " ORDER BY at, chain, seq"
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("sales1", "denied", "invalid-credentials"),
        ("sales1", "denied", "invalid-credentials"),
        ("sales1", "denied", "rate-limited"),
    ]


def test_forwarded_for_is_read_over_all_its_header_lines(make_settings: SettingsFactory) -> None:
    settings = make_settings(login_rate_limit="3/5minutes", trusted_proxies="10.0.0.0/8")
    with TestClient(create_app(settings), client=("10.0.0.1", 50000)) as client:

        def attempt(login_name: str, password: str, *lines: str) -> int:
            headers = [("X-Forwarded-For", line) for line in lines]
            response = client.post("/auth/token", data=_form(login_name, password), headers=headers)
            return response.status_code

        # The client writes whatever it likes in a first line; the proxy appends its own line.
        for n in range(3):
            assert attempt(f"nobody-{n}", "wrong", f"192.0.2.{n}", "203.0.113.5") == 401
        assert attempt(cast.SALES.login, cast.SALES.password, "192.0.2.99", "203.0.113.5") == 429
        assert attempt(cast.SALES.login, cast.SALES.password, "203.0.113.5, 10.0.0.7") == 429
        # Reading only the first line would have believed the spoofed address.
        assert attempt(cast.SALES.login, cast.SALES.password, "203.0.113.6") == 200


def test_ipv6_clients_are_limited_per_64(make_settings: SettingsFactory) -> None:
    settings = make_settings(login_rate_limit="3/5minutes")
    app = create_app(settings)

    def attempt(peer: str, login_name: str, password: str) -> int:
        with TestClient(app, client=(peer, 50000)) as client:
            return client.post("/auth/token", data=_form(login_name, password)).status_code

    for n in range(1, 4):
        assert attempt(f"2001:db8:1:2::{n}", f"nobody-{n}", "wrong") == 401
    assert attempt("2001:db8:1:2:ffff::1", cast.SALES.login, cast.SALES.password) == 429
    assert attempt("2001:db8:1:3::1", cast.SALES.login, cast.SALES.password) == 200


# --- Argon2 and the database's locks -------------------------------------------------------------


def _no_transaction_open(database_url: str, db: Engine) -> Callable[[], None]:
    """A check, run while Argon2 runs: no request holds a database lock or an open transaction.

    On SQLite another connection takes the write lock without waiting (``BEGIN IMMEDIATE`` with
    no busy timeout); on PostgreSQL no connection of the app is idle in a transaction."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = url.database
        assert path is not None

        def check() -> None:
            connection = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("ROLLBACK")
            finally:
                connection.close()

        return check

    def check_postgres() -> None:
        with db.connect() as connection:
            busy = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
                )
            ).scalar()
        assert busy == 0

    return check_postgres


@pytest.fixture
def argon2_checked(
    monkeypatch: pytest.MonkeyPatch, database_url: str, db: Engine
) -> Iterator[list[str]]:
    """Run the lock check inside every Argon2 call (in the thread that runs it)."""
    check = _no_transaction_open(database_url, db)
    checked: list[str] = []
    verify, hash_ = PasswordHasher.verify, PasswordHasher.hash

    def checked_verify(self: PasswordHasher, *args: Any, **kwargs: Any) -> bool:
        check()
        checked.append("verify")
        return verify(self, *args, **kwargs)

    def checked_hash(self: PasswordHasher, *args: Any, **kwargs: Any) -> str:
        check()
        checked.append("hash")
        return hash_(self, *args, **kwargs)

    monkeypatch.setattr(PasswordHasher, "verify", checked_verify)
    monkeypatch.setattr(PasswordHasher, "hash", checked_hash)
    yield checked


def test_argon2_never_runs_under_a_database_lock(
    client: TestClient, as_member: AsMember, argon2_checked: list[str]
) -> None:
    # Appends start background work in their own short transactions (this process's first
    # checkpoint; a privileged_change alert after an admin's change): it is not a request's lock,
    # so each check below, the logins of the members included, starts once it has finished.
    assert client.portal is not None
    runtime = client.app.state.runtime  # type: ignore[attr-defined]

    def settle() -> None:
        assert client.portal is not None
        client.portal.call(runtime.drain)

    settle()
    admin = as_member(cast.ADMIN)
    settle()
    sales = as_member(cast.SALES)
    settle()
    assert client.post("/auth/token", data=_form(cast.SALES.login, "wrong")).status_code == 401
    settle()
    assert client.post("/auth/token", data=_form("nobody", "wrong")).status_code == 401
    settle()
    changed = client.post(
        "/auth/password",
        json={"current": cast.SALES.password, "new": "a-brand-new-passphrase"},
        headers=sales,
    )
    assert changed.status_code == 200
    body = {
        "login": "newbie",
        "display_name": "新人",
        "role": "sales",
        "store": "S001",
        "password": "temporary-password-xyz",
    }
    settle()
    created = client.post("/staff", json=body, headers=admin)
    assert created.status_code == 201
    settle()
    reset = {"password": "another-temporary-pw"}
    assert (
        client.patch(f"/staff/{created.json()['id']}", json=reset, headers=admin).status_code == 200
    )
    # Every one of them ran the check (a verification per login, two for the change, a hash each
    # for the admin's passwords): the logins of the fixtures included.
    assert argon2_checked.count("verify") >= 5
    assert argon2_checked.count("hash") == 3


def test_a_password_change_loses_to_a_change_made_meanwhile(
    client: TestClient, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Argon2 runs between the read and the write: the write happens only if nothing changed
    the member in between (here, an admin's change ending their tokens)."""
    headers = login(client, cast.SALES)
    verify = PasswordHasher.verify

    def meanwhile(self: PasswordHasher, *args: Any, **kwargs: Any) -> bool:
        with db.begin() as connection:
            connection.execute(
                text("UPDATE staff SET auth_epoch = auth_epoch + 1 WHERE login = 'sales1'")
            )
        return verify(self, *args, **kwargs)

    monkeypatch.setattr(PasswordHasher, "verify", meanwhile)
    response = client.post(
        "/auth/password",
        json={"current": cast.SALES.password, "new": "a-brand-new-passphrase"},
        headers=headers,
    )
    assert response.status_code == 401
    monkeypatch.setattr(PasswordHasher, "verify", verify)
    assert client.post("/auth/token", data=_form("sales1", cast.SALES.password)).status_code == 200


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # SQLite serialises all writes
def test_auth_epoch_is_bumped_in_sql(
    client: TestClient, as_member: AsMember, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bump made by someone else after the admin's request read the member is not lost."""
    admin = as_member(cast.ADMIN)
    with db.connect() as connection:
        sales_id, before = connection.execute(
            select(Staff.id, Staff.auth_epoch).where(Staff.login == "sales1")
        ).one()
    end_tokens = admin_repository.end_tokens

    def concurrent_bump_first(account: Any) -> None:
        with db.begin() as connection:
            connection.execute(
                text("UPDATE staff SET auth_epoch = auth_epoch + 1 WHERE login = 'sales1'")
            )
        end_tokens(account)

    monkeypatch.setattr(admin_repository, "end_tokens", concurrent_bump_first)
    response = client.patch(f"/staff/{sales_id}", json={"active": False}, headers=admin)
    assert response.status_code == 200
    with db.connect() as connection:
        after = connection.execute(
            select(Staff.auth_epoch).where(Staff.id == sales_id)
        ).scalar_one()
    assert after == before + 2


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux's")
def test_argon2_runs_off_the_event_loop_at_a_lower_priority(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that a burst of logins takes only the CPU the shop's reads leave."""
    seen: list[tuple[str, int]] = []
    verify = PasswordHasher.verify

    def observed(self: PasswordHasher, *args: Any, **kwargs: Any) -> bool:
        thread = threading.current_thread()
        seen.append((thread.name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return verify(self, *args, **kwargs)

    monkeypatch.setattr(PasswordHasher, "verify", observed)
    assert client.post("/auth/token", data=_form(cast.SALES.login, "wrong")).status_code == 401
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert [(name.startswith("argon2"), nice) for name, nice in seen] == [
        (True, min(base + ARGON2_NICENESS, 19))
    ]
