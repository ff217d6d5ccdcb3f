"""The unit of work: one transaction per request, committed before the response is sent.

The central promise: when the COMMIT itself fails, the caller gets ``503`` and no data, and
nothing was written. The failures are real ones, made by the database: a constraint checked only
at COMMIT (a deferred constraint trigger on PostgreSQL, a deferred foreign key on SQLite), or a
trigger that refuses the access event's insert.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from app.audit.events import Action, EventDraft, Outcome
from app.auth.deps import CurrentPrincipal
from app.auth.repository import revoke
from app.config import Settings
from app.errors import Conflict, Forbidden
from app.main import create_app
from app.models.base import utcnow
from app.uow import UnitOfWorkDep
from tests import cast
from tests.conftest import login

# --- traps set in the database ----------------------------------------------------------------

_COMMIT_TRAP = {
    "postgres": (
        [
            "CREATE FUNCTION commit_trap_fail() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'commit trap'; END $$",
            "CREATE CONSTRAINT TRIGGER commit_trap AFTER INSERT ON access_event "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION commit_trap_fail()",
        ],
        ["DROP TRIGGER commit_trap ON access_event", "DROP FUNCTION commit_trap_fail()"],
    ),
    # SQLite checks deferred foreign keys at COMMIT (app/db.py turns foreign keys on).
    "sqlite": (
        [
            "CREATE TABLE commit_trap_parent (id TEXT PRIMARY KEY)",
            "CREATE TABLE commit_trap (event_id TEXT REFERENCES commit_trap_parent(id) "
            "DEFERRABLE INITIALLY DEFERRED)",
            "CREATE TRIGGER commit_trap AFTER INSERT ON access_event "
            "BEGIN INSERT INTO commit_trap (event_id) VALUES (NEW.id); END",
        ],
        ["DROP TRIGGER commit_trap"],
    ),
}

_INSERT_TRAP = {
    "postgres": (
        [
            "CREATE FUNCTION insert_trap_fail() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit log unavailable'; END $$",
            "CREATE TRIGGER insert_trap BEFORE INSERT ON access_event "
            "FOR EACH ROW EXECUTE FUNCTION insert_trap_fail()",
        ],
        ["DROP TRIGGER insert_trap ON access_event", "DROP FUNCTION insert_trap_fail()"],
    ),
    "sqlite": (
        [
            "CREATE TRIGGER insert_trap BEFORE INSERT ON access_event "
            "BEGIN SELECT RAISE(ABORT, 'audit log unavailable'); END",
        ],
        ["DROP TRIGGER insert_trap"],
    ),
}


class Trap:
    def __init__(self, db: Engine, statements: tuple[list[str], list[str]]) -> None:
        self.db = db
        self.set_statements, self.remove_statements = statements

    def set(self) -> None:
        with self.db.begin() as connection:
            for statement in self.set_statements:
                connection.exec_driver_sql(statement)

    def remove(self) -> None:
        with self.db.begin() as connection:
            for statement in self.remove_statements:
                connection.exec_driver_sql(statement)


@pytest.fixture
def commit_trap(db: Engine, backend: str) -> Trap:
    return Trap(db, _COMMIT_TRAP[backend])


@pytest.fixture
def insert_trap(db: Engine, backend: str) -> Trap:
    return Trap(db, _INSERT_TRAP[backend])


def _count(db: Engine, table: str) -> int:
    with db.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _written(db: Engine) -> dict[str, int]:
    return {table: _count(db, table) for table in ("access_event", "audit_chain", "revoked_token")}


def _password_form(member: cast.Member) -> dict[str, str]:
    return {"grant_type": "password", "username": member.login, "password": member.password}


def assert_unavailable(response: Any, slug: str | None = None) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["status"] == 503
    assert body["type"] in {"/problems/unavailable", "/problems/audit-unavailable"}
    if slug is not None:
        assert body["type"] == f"/problems/{slug}"
    assert "access_token" not in response.text
    assert "commit trap" not in response.text and "audit log unavailable" not in response.text


# --- the COMMIT itself fails ------------------------------------------------------------------

_RAW_EVENT = text(
    "INSERT INTO access_event (id, chain, seq, at, action, resource, fields, outcome,"
    " review_required, request_id, encoding_version, prev_hash, hash) VALUES"
    " ('trap-check', 'trap:0', 1, :at, 'read', 'trap', '[]', 'allowed', false, 'r', 1, 'p', 'h')"
)


def test_the_commit_trap_fires_at_commit_not_before(db: Engine, commit_trap: Trap) -> None:
    # A check of the harness: the insert itself succeeds, only its COMMIT is refused.
    commit_trap.set()
    inserted = False
    with pytest.raises(DBAPIError), db.begin() as connection:
        connection.execute(_RAW_EVENT, {"at": utcnow()})
        inserted = True
    assert inserted
    assert _count(db, "access_event") == 0


def test_login_whose_commit_fails_gets_503_and_no_token(
    client: TestClient, db: Engine, commit_trap: Trap
) -> None:
    before = _written(db)
    commit_trap.set()
    response = client.post("/auth/token", data=_password_form(cast.SALES))
    assert_unavailable(response)
    assert _written(db) == before
    commit_trap.remove()
    assert client.post("/auth/token", data=_password_form(cast.SALES)).status_code == 200
    assert _count(db, "access_event") == 1


def test_logout_whose_commit_fails_leaves_the_token_valid(
    client: TestClient, db: Engine, commit_trap: Trap
) -> None:
    headers = login(client, cast.SALES)
    before = _written(db)
    commit_trap.set()
    assert_unavailable(client.post("/auth/logout", headers=headers))
    assert _written(db) == before
    commit_trap.remove()
    assert client.get("/auth/me", headers=headers).status_code == 200


def test_password_change_whose_commit_fails_changes_nothing(
    client: TestClient, db: Engine, commit_trap: Trap
) -> None:
    headers = login(client, cast.SALES)
    with db.connect() as connection:
        before = connection.execute(
            text("SELECT password_hash, auth_epoch FROM staff WHERE login = 'sales1'")
        ).one()
    commit_trap.set()
    response = client.post(
        "/auth/password",
        json={"current": cast.SALES.password, "new": "a-brand-new-passphrase"},
        headers=headers,
    )
    assert_unavailable(response)
    commit_trap.remove()
    with db.connect() as connection:
        after = connection.execute(
            text("SELECT password_hash, auth_epoch FROM staff WHERE login = 'sales1'")
        ).one()
    assert tuple(after) == tuple(before)
    assert client.get("/auth/me", headers=headers).status_code == 200


def test_failed_login_whose_commit_fails_gets_503(
    client: TestClient, db: Engine, commit_trap: Trap
) -> None:
    commit_trap.set()
    form = {"grant_type": "password", "username": "sales1", "password": "wrong-password"}
    assert_unavailable(client.post("/auth/token", data=form))
    assert _count(db, "access_event") == 0


# --- the access event cannot be written --------------------------------------------------------


def test_login_whose_event_cannot_be_written(
    client: TestClient, db: Engine, insert_trap: Trap
) -> None:
    before = _written(db)
    insert_trap.set()
    response = client.post("/auth/token", data=_password_form(cast.SALES))
    assert_unavailable(response, "audit-unavailable")
    assert _written(db) == before


def test_logout_whose_event_cannot_be_written(
    client: TestClient, db: Engine, insert_trap: Trap
) -> None:
    headers = login(client, cast.SALES)
    before = _written(db)
    insert_trap.set()
    assert_unavailable(client.post("/auth/logout", headers=headers), "audit-unavailable")
    assert _written(db) == before
    insert_trap.remove()
    assert client.get("/auth/me", headers=headers).status_code == 200


def test_refusal_whose_event_cannot_be_written(
    client: TestClient, db: Engine, insert_trap: Trap
) -> None:
    insert_trap.set()
    form = {"grant_type": "password", "username": "sales1", "password": "wrong-password"}
    assert_unavailable(client.post("/auth/token", data=form), "audit-unavailable")
    assert _count(db, "access_event") == 0


# --- refusals and errors inside a request ------------------------------------------------------

PROBE_JTI = "00000000-0000-4000-8000-000000000001"
probe = APIRouter(prefix="/_probe")


async def _write_something(uow: Any, principal: Any) -> None:
    # Real work of the request: a row, and an allowed event recorded for it.
    await revoke(uow.session, PROBE_JTI, utcnow())
    await uow.session.flush()
    uow.record(EventDraft(actor=principal.actor, action=Action.ADMIN, resource="probe/work"))


@probe.post("/refuse-with-event")
async def refuse_with_event(uow: UnitOfWorkDep, principal: CurrentPrincipal) -> None:
    await _write_something(uow, principal)
    raise Forbidden(
        audit_event=EventDraft(
            actor=principal.actor,
            action=Action.ADMIN,
            resource="probe/refused",
            outcome=Outcome.DENIED,
            denial=Forbidden.slug,
        )
    )


@probe.post("/refuse")
async def refuse(uow: UnitOfWorkDep, principal: CurrentPrincipal) -> None:
    await _write_something(uow, principal)
    raise Conflict()


@probe.post("/crash")
async def crash(uow: UnitOfWorkDep, principal: CurrentPrincipal) -> None:
    await _write_something(uow, principal)
    raise RuntimeError("unexpected")


@probe.post("/work")
async def work(uow: UnitOfWorkDep, principal: CurrentPrincipal) -> dict[str, str]:
    await _write_something(uow, principal)
    return {"secret": "only-after-commit"}


@probe.get("/read")
async def read(uow: UnitOfWorkDep, principal: CurrentPrincipal) -> dict[str, str]:
    # No query of its own: the caller is checked against the database only at commit.
    uow.record(EventDraft(actor=principal.actor, action=Action.READ, resource="probe/read"))
    return {"secret": "only-after-commit"}


@pytest.fixture
def probe_client(settings: Settings) -> Iterator[TestClient]:
    app: FastAPI = create_app(settings)
    app.include_router(probe)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _resources(db: Engine) -> list[tuple[str, str]]:
    with db.connect() as connection:
        rows = connection.execute(
            text("SELECT resource, outcome FROM access_event WHERE resource LIKE 'probe/%'")
        ).all()
    return sorted((row[0], row[1]) for row in rows)


def _probe_token_revoked(db: Engine) -> bool:
    with db.connect() as connection:
        statement = text("SELECT count(*) FROM revoked_token WHERE jti = :jti")
        return bool(connection.execute(statement, {"jti": PROBE_JTI}).scalar_one())


def test_work_is_committed_with_its_event(probe_client: TestClient, db: Engine) -> None:
    response = probe_client.post("/_probe/work", headers=login(probe_client, cast.ADMIN))
    assert response.status_code == 200
    assert _probe_token_revoked(db)
    assert _resources(db) == [("probe/work", "allowed")]


def test_refusal_commits_only_its_denied_event(probe_client: TestClient, db: Engine) -> None:
    response = probe_client.post(
        "/_probe/refuse-with-event", headers=login(probe_client, cast.ADMIN)
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert not _probe_token_revoked(db)
    assert _resources(db) == [("probe/refused", "denied")]


def test_refusal_without_event_commits_nothing(probe_client: TestClient, db: Engine) -> None:
    headers = login(probe_client, cast.ADMIN)
    before = _written(db)
    response = probe_client.post("/_probe/refuse", headers=headers)
    assert response.status_code == 409
    assert _written(db) == before


def test_unexpected_error_commits_nothing(probe_client: TestClient, db: Engine) -> None:
    headers = login(probe_client, cast.ADMIN)
    before = _written(db)
    response = probe_client.post("/_probe/crash", headers=headers)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "unexpected" not in response.text
    assert _written(db) == before


def test_work_whose_commit_fails_returns_no_data(
    probe_client: TestClient, db: Engine, commit_trap: Trap
) -> None:
    headers = login(probe_client, cast.ADMIN)
    before = _written(db)
    commit_trap.set()
    response = probe_client.post("/_probe/work", headers=headers)
    assert_unavailable(response)
    assert "only-after-commit" not in response.text
    assert _written(db) == before


def test_read_whose_caller_check_fails_at_commit_returns_no_data(
    probe_client: TestClient, db: Engine
) -> None:
    headers = login(probe_client, cast.ADMIN)
    assert probe_client.get("/_probe/read", headers=headers).status_code == 200
    before = _written(db)
    # The caller check reads revoked_token: without it, the check fails in the database.
    with db.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE revoked_token RENAME TO revoked_token_away")
    response = probe_client.get("/_probe/read", headers=headers)
    with db.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE revoked_token_away RENAME TO revoked_token")
    assert_unavailable(response)
    assert "only-after-commit" not in response.text
    assert _written(db) == before


def test_revoked_caller_gets_no_data_from_a_route_without_queries(
    probe_client: TestClient, db: Engine
) -> None:
    headers = login(probe_client, cast.ADMIN)
    assert probe_client.post("/auth/logout", headers=headers).status_code == 204
    before = _written(db)
    response = probe_client.get("/_probe/read", headers=headers)
    assert response.status_code == 401
    assert "only-after-commit" not in response.text
    assert _written(db) == before


def test_refusal_of_a_revoked_caller_records_nothing(probe_client: TestClient, db: Engine) -> None:
    headers = login(probe_client, cast.ADMIN)
    assert probe_client.post("/auth/logout", headers=headers).status_code == 204
    before = _written(db)
    response = probe_client.post("/_probe/refuse-with-event", headers=headers)
    assert response.status_code == 401
    assert _written(db) == before


def test_failed_login_commits_its_denied_event(client: TestClient, db: Engine) -> None:
    form = {"grant_type": "password", "username": "sales1", "password": "wrong-password"}
    response = client.post("/auth/token", data=form)
    assert response.status_code == 401
    with db.connect() as connection:
        rows = connection.execute(
            text("SELECT actor, outcome, request_id FROM access_event WHERE action = 'login'")
        ).all()
    assert [tuple(row) for row in rows] == [("sales1", "denied", response.headers["x-request-id"])]
