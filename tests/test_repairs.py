"""The repair workflow's history: each status kept with who and when (``received`` at intake),
shown with the repair's disclosed text; refused changes leave no trace; repairs without a status
change for 30 days are listed to the store's manager; and the migration gives repairs opened
before the history was kept their steps."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from app import migrate
from app.db import create_sync_engine
from app.models import RepairStatusChange, Staff, Store, Visit
from tests import cast, databases
from tests.access_log import event_of
from tests.world import open_visit, purpose, register_customer

Headers = dict[str, str]
AsMember = Callable[..., Headers]
PROBLEM = "application/problem+json"
REASON = "修理状況の問い合わせに対応するため"


def _is_problem(response: Any, status: int, slug: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    if slug is not None:
        assert response.json()["type"] == f"/problems/{slug}"


def _move(client: TestClient, headers: Headers, visit_id: str, status: str) -> Any:
    return client.patch(f"/visits/{visit_id}", json={"repair": {"status": status}}, headers=headers)


def _steps(db: Engine, visit_id: str) -> list[tuple[str, str | None]]:
    """(status, login) of each step, in order."""
    with Session(db) as session:
        rows = session.execute(
            select(RepairStatusChange.status, Staff.login)
            .outerjoin(Staff, Staff.id == RepairStatusChange.changed_by)
            .where(RepairStatusChange.visit_id == visit_id)
            .order_by(RepairStatusChange.changed_at, RepairStatusChange.id)
        ).all()
    return [(status, login) for status, login in rows]


def _repair_visit(client: TestClient, as_member: AsMember, seed: int) -> tuple[str, str]:
    """A repair visit at S001 opened by the technician for a registered customer."""
    customer = register_customer(client, as_member(cast.SALES), seed=seed)
    visit_id = open_visit(client, as_member(cast.TECHNICIAN), "repair", customer.id)
    return visit_id, customer.id


# --- the history --------------------------------------------------------------------------------


def test_each_status_is_kept_with_who_and_when(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    tech, manager = as_member(cast.TECHNICIAN), as_member(cast.MANAGER)
    visit_id, _ = _repair_visit(client, as_member, seed=71)
    assert _steps(db, visit_id) == [("received", cast.TECHNICIAN.login)]

    assert _move(client, tech, visit_id, "diagnosing").status_code == 200
    assert _move(client, manager, visit_id, "ready").status_code == 200
    read = client.get(f"/visits/{visit_id}", headers=purpose(tech, "repair"))
    assert read.status_code == 200, read.text
    repair = read.json()["repair"]
    history = repair["history"]
    assert [(step["status"], step["by"]) for step in history] == [
        ("received", cast.TECHNICIAN.login),
        ("diagnosing", cast.TECHNICIAN.login),
        ("ready", cast.MANAGER.login),
    ]
    times = [datetime.fromisoformat(step["at"]) for step in history]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert times[-1] == datetime.fromisoformat(repair["updated_at"])
    assert times[0] == datetime.fromisoformat(read.json()["opened_at"])
    assert repair["status"] == "ready"
    event = event_of(db, read)
    assert (event.action, event.fields, event.purpose) == ("read", ["repairs"], "repair")

    returned = _move(client, tech, visit_id, "returned")
    assert returned.status_code == 200, returned.text
    assert returned.json()["status"] == "closed"
    assert [s for s, _ in _steps(db, visit_id)] == ["received", "diagnosing", "ready", "returned"]


def test_the_history_goes_with_the_repairs_disclosed_text_only(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    tech = as_member(cast.TECHNICIAN)
    visit_id, customer_id = _repair_visit(client, as_member, seed=72)
    assert _move(client, tech, visit_id, "diagnosing").status_code == 200

    plain = client.get(f"/visits/{visit_id}", headers=tech)
    assert plain.status_code == 200, plain.text
    assert "history" not in plain.json()["repair"] and "symptom" not in plain.json()["repair"]

    # A manager sees it too (the open visit with its customer justifies the look).
    manager = purpose(as_member(cast.MANAGER), "support", reason=REASON)
    looked = client.get(f"/visits/{visit_id}", headers=manager)
    assert looked.status_code == 200, looked.text
    assert [step["status"] for step in looked.json()["repair"]["history"]] == [
        "received",
        "diagnosing",
    ]
    assert event_of(db, looked).fields == ["repairs"]

    # Sales never see repair text: refused, nothing shown.
    refused = client.get(f"/visits/{visit_id}", headers=purpose(as_member(cast.SALES), "support"))
    _is_problem(refused, 403, "purpose-not-allowed")
    assert "history" not in refused.text

    # Once returned, the visit no longer justifies the technician's reading its text.
    assert _move(client, tech, visit_id, "returned").status_code == 200
    closed = client.get(f"/visits/{visit_id}", headers=purpose(tech, "repair"))
    _is_problem(closed, 403, "visit-required")
    assert event_of(db, closed).customer_ids == [customer_id]

    # Changes and lists answer no history (only GET /visits/{id} does).
    other, _ = _repair_visit(client, as_member, seed=73)
    moved = _move(client, purpose(tech, "repair"), other, "diagnosing")
    assert moved.status_code == 200 and "history" not in moved.json()["repair"]
    listed = client.get("/visits", headers=purpose(tech, "repair")).json()["items"]
    assert all("history" not in (item["repair"] or {}) for item in listed)


@pytest.mark.parametrize(
    ("steps", "refused", "status"),
    [
        (["diagnosing"], "received", 409),
        (["repairing"], "diagnosing", 409),
        (["ready"], "ready", 409),
        (["ready", "returned"], "repairing", 409),
        (["ready", "returned"], "returned", 409),
        ([], "fixed", 422),
        ([], None, 422),
    ],
    ids=[
        "back-to-received",
        "backwards",
        "same",
        "after-return",
        "return-twice",
        "unknown",
        "null",
    ],
)
def test_a_refused_status_change_changes_nothing(
    client: TestClient,
    as_member: AsMember,
    db: Engine,
    steps: list[str],
    refused: str | None,
    status: int,
) -> None:
    tech = as_member(cast.TECHNICIAN)
    visit_id, _ = _repair_visit(client, as_member, seed=74)
    for step in steps:
        assert _move(client, tech, visit_id, step).status_code == 200
    before = _steps(db, visit_id)
    with Session(db) as session:
        row = session.get(Visit, visit_id)
        assert row is not None
        kept = (row.repair_status, row.repair_updated_at, row.closed_at)

    _is_problem(_move(client, tech, visit_id, refused), status)  # type: ignore[arg-type]
    assert _steps(db, visit_id) == before
    with Session(db) as session:
        row = session.get(Visit, visit_id)
        assert row is not None
        assert (row.repair_status, row.repair_updated_at, row.closed_at) == kept


def test_another_stores_repair_cannot_be_moved(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    visit_id, _ = _repair_visit(client, as_member, seed=75)
    response = _move(client, as_member(cast.TECHNICIAN_OTHER_STORE), visit_id, "diagnosing")
    _is_problem(response, 404, "not-found")
    assert _steps(db, visit_id) == [("received", cast.TECHNICIAN.login)]


def test_non_repair_visits_have_no_history(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    visit_id = open_visit(client, as_member(cast.SALES), "inquiry")
    assert _steps(db, visit_id) == []


# --- stale repairs ------------------------------------------------------------------------------


def _last_change(db: Engine, visit_id: str, ago: timedelta) -> None:
    with db.begin() as connection:
        connection.execute(
            update(Visit)
            .where(Visit.id == visit_id)
            .values(repair_updated_at=datetime.now(UTC) - ago)
        )


def _stale(client: TestClient, headers: Headers, **params: Any) -> Any:
    return client.get("/visits", params={"status": "stale", **params}, headers=headers)


def test_the_manager_sees_repairs_without_a_status_change_for_30_days(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    tech, manager = as_member(cast.TECHNICIAN), as_member(cast.MANAGER)
    stale, _ = _repair_visit(client, as_member, seed=76)
    older, _ = _repair_visit(client, as_member, seed=77)
    fresh, _ = _repair_visit(client, as_member, seed=78)
    returned, _ = _repair_visit(client, as_member, seed=79)
    there = open_visit(client, as_member(cast.TECHNICIAN_OTHER_STORE), "repair")
    inquiry = open_visit(client, as_member(cast.SALES), "inquiry")
    assert _move(client, tech, returned, "returned").status_code == 200
    _last_change(db, stale, timedelta(days=30, hours=1))
    _last_change(db, older, timedelta(days=90))
    _last_change(db, fresh, timedelta(days=29, hours=23))
    _last_change(db, returned, timedelta(days=60))
    _last_change(db, there, timedelta(days=60))
    with db.begin() as connection:
        connection.execute(
            update(Visit)
            .where(Visit.id == inquiry)
            .values(
                repair_updated_at=datetime.now(UTC) - timedelta(days=60),
                auto_close_at=None,
            )
        )

    response = _stale(client, manager)
    assert response.status_code == 200, response.text
    # Newest first, like every list.
    assert [item["id"] for item in response.json()["items"]] == [older, stale]
    assert all(
        item["type"] == "repair" and item["status"] == "open" for item in response.json()["items"]
    )
    assert all("symptom" not in item["repair"] for item in response.json()["items"])

    other_manager = _stale(client, as_member(cast.MANAGER_OTHER_STORE))
    assert [item["id"] for item in other_manager.json()["items"]] == [there]

    # The text of stale repairs, like any list's, only with a purpose and a reason.
    with_text = _stale(client, purpose(manager, "repair", reason=REASON))
    assert with_text.status_code == 200, with_text.text
    assert all("symptom" in item["repair"] for item in with_text.json()["items"])

    # A status change takes a repair off the list.
    assert _move(client, tech, stale, "repairing").status_code == 200
    assert [item["id"] for item in _stale(client, manager).json()["items"]] == [older]


def test_the_stale_list_pages(client: TestClient, as_member: AsMember, db: Engine) -> None:
    visits = [_repair_visit(client, as_member, seed=80 + n)[0] for n in range(3)]
    for visit_id in visits:
        _last_change(db, visit_id, timedelta(days=45))
    manager = as_member(cast.MANAGER)
    first = _stale(client, manager, limit=2)
    assert len(first.json()["items"]) == 2 and first.json()["next"] is not None
    rest = _stale(client, manager, limit=2, cursor=first.json()["next"])
    seen = [item["id"] for item in first.json()["items"] + rest.json()["items"]]
    assert sorted(seen) == sorted(visits) and rest.json()["next"] is None


@pytest.mark.parametrize("member", [cast.SALES, cast.TECHNICIAN], ids=str)
def test_only_managers_list_stale_repairs(
    client: TestClient, as_member: AsMember, db: Engine, member: cast.Member
) -> None:
    visit_id, _ = _repair_visit(client, as_member, seed=84)
    _last_change(db, visit_id, timedelta(days=45))
    response = _stale(client, as_member(member))
    _is_problem(response, 403, "forbidden")
    assert visit_id not in response.text
    event = event_of(db, response)
    assert (event.outcome, event.action, event.resource, event.actor) == (
        "denied",
        "read",
        "visits",
        member.login,
    )
    # The open list stays theirs.
    assert client.get("/visits", headers=as_member(member)).status_code == 200


def test_an_unknown_list_status_is_422(client: TestClient, as_member: AsMember) -> None:
    _is_problem(
        client.get("/visits", params={"status": "late"}, headers=as_member(cast.MANAGER)), 422
    )


# --- the migration ------------------------------------------------------------------------------


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    base = databases.postgres_base_url()
    assert base is not None
    with databases.postgres_empty(base) as url:
        yield url


def test_the_migration_gives_earlier_repairs_their_history(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url, "0005")
    engine = create_sync_engine(empty_database_url)
    now = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    store, staff = str(uuid.uuid4()), str(uuid.uuid4())
    moved, received, inquiry = (str(uuid.uuid4()) for _ in range(3))
    visit_columns = {
        "store_id": store,
        "opened_by": staff,
        "opened_at": now,
        "auto_close_at": None,
        "closed_at": None,
        "customer_id": None,
        "notes_enc": None,
        "repair_symptom_enc": None,
    }
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(Store.__table__).values(
                    id=store,
                    code="S009",
                    name="テスト店",
                    opens_at="10:00",
                    closes_at="20:00",
                    created_at=now,
                )
            )
            connection.execute(
                insert(Staff.__table__).values(
                    id=staff,
                    login="tech9",
                    display_name="テスト",
                    role="technician",
                    store_id=store,
                    password_hash="x",
                    active=True,
                    auth_epoch=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            connection.execute(
                insert(Visit.__table__),
                [
                    {
                        **visit_columns,
                        "id": moved,
                        "type": "repair",
                        "repair_device_model": "Pixel 9",
                        "repair_status": "repairing",
                        "repair_updated_at": now + timedelta(days=2),
                    },
                    {
                        **visit_columns,
                        "id": received,
                        "type": "repair",
                        "repair_device_model": "Pixel 9",
                        "repair_status": "received",
                        "repair_updated_at": now,
                    },
                    {
                        **visit_columns,
                        "id": inquiry,
                        "type": "inquiry",
                        "repair_device_model": None,
                        "repair_status": None,
                        "repair_updated_at": None,
                    },
                ],
            )
        migrate.upgrade(empty_database_url)
        with Session(engine) as session:
            rows = session.execute(
                select(
                    RepairStatusChange.visit_id,
                    RepairStatusChange.status,
                    RepairStatusChange.changed_by,
                    RepairStatusChange.changed_at,
                ).order_by(RepairStatusChange.visit_id, RepairStatusChange.changed_at)
            ).all()
    finally:
        engine.dispose()
    history: dict[str, list[tuple[str, str | None, datetime]]] = {}
    for visit_id, status, by, at in rows:
        history.setdefault(visit_id, []).append((status, by, at))
    assert history == {
        moved: [("received", staff, now), ("repairing", None, now + timedelta(days=2))],
        received: [("received", staff, now)],
    }
