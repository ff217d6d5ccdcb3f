"""Administration: stores, staff and system clients, for admins only, every action recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from app.admin import repository
from app.models import AccessEvent, Staff, Store, SystemClient
from tests import cast
from tests.conftest import login, login_client

AsMember = Callable[..., dict[str, str]]
PROBLEM = "application/problem+json"
NEW_PASSWORD = "a-fresh-password-for-tests"
HOURS = {"open": "10:00", "close": "20:00"}


def _post_store(client: TestClient, admin: dict[str, str], code: str) -> dict[str, Any]:
    body = {"code": code, "name": f"テスト店 {code}", "opening_hours": HOURS}
    response = client.post("/stores", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _post_staff(
    client: TestClient,
    admin: dict[str, str],
    login_name: str,
    role: str = "sales",
    store: str | None = "S001",
) -> dict[str, Any]:
    body = {
        "login": login_name,
        "display_name": "テスト 花子",
        "role": role,
        "store": store,
        "password": NEW_PASSWORD,
    }
    response = client.post("/staff", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _post_client(
    client: TestClient, admin: dict[str, str], name: str, role: str = "billing_system"
) -> dict[str, Any]:
    response = client.post("/clients", json={"name": name, "role": role}, headers=admin)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _approve(client: TestClient, auditor: dict[str, str], path: str) -> dict[str, Any]:
    """An auditor approves the pending change of ``staff/<id>`` or ``clients/<id>``."""
    response = client.post(f"/{path}/approve", headers=auditor)
    assert response.status_code == 200, response.text
    assert response.json()["pending_approval"] is False
    return dict(response.json())


def _id_of(client: TestClient, admin: dict[str, str], path: str, key: str, value: str) -> str:
    items = client.get(path, params={"limit": 500}, headers=admin).json()["items"]
    return str(next(item["id"] for item in items if item[key] == value))


def _staff_form(login_name: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": login_name, "password": password}


def _client_form(name: str, secret: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": name, "client_secret": secret}


def _staff_login(client: TestClient, login_name: str, password: str) -> int:
    return client.post("/auth/token", data=_staff_form(login_name, password)).status_code


def _client_login(client: TestClient, name: str, secret: str) -> int:
    return client.post("/auth/token", data=_client_form(name, secret)).status_code


def _bearer(client: TestClient, form: dict[str, str]) -> dict[str, str]:
    response = client.post("/auth/token", data=form)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _me(client: TestClient, headers: dict[str, str]) -> int:
    return client.get("/auth/me", headers=headers).status_code


def _walk(client: TestClient, admin: dict[str, str], path: str, limit: int) -> list[list[str]]:
    """Every page of a list, as lists of ids, following `next` until it is null."""
    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        response = client.get(path, params=params, headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["id"] for item in body["items"]])
        if body["next"] is None:
            return pages
        params = {"limit": limit, "cursor": body["next"]}


def _admin_events(db: Engine) -> list[tuple[Any, ...]]:
    statement = select(
        AccessEvent.actor,
        AccessEvent.role,
        AccessEvent.resource,
        AccessEvent.outcome,
        AccessEvent.changed_fields,
    ).where(AccessEvent.action == "admin")
    with db.connect() as connection:
        return [tuple(row) for row in connection.execute(statement)]


def _counts(db: Engine) -> list[int]:
    """How many stores, staff and system clients there are."""
    with db.connect() as connection:
        return [
            connection.execute(select(func.count()).select_from(model)).scalar_one()
            for model in (Store, Staff, SystemClient)
        ]


# --- stores and lists ---------------------------------------------------------------------------


def test_admin_creates_and_lists_stores(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    admin = as_member(cast.ADMIN)
    store = _post_store(client, admin, "S003")
    assert set(store) == {"id", "code", "name", "opening_hours", "created_at"}
    assert (store["code"], store["opening_hours"]) == ("S003", HOURS)

    listed = client.get("/stores", headers=admin)
    assert listed.status_code == 200
    assert listed.json()["items"][0]["code"] == "S003"
    assert {item["code"] for item in listed.json()["items"]} == {"S001", "S002", "S003"}
    assert listed.json()["next"] is None

    events = _admin_events(db)
    assert ("admin", "admin", f"stores/{store['id']}", "allowed", None) in events
    assert ("admin", "admin", "stores", "allowed", None) in events


def test_lists_are_paginated_newest_first(client: TestClient, as_member: AsMember) -> None:
    admin = as_member(cast.ADMIN)
    created = [_post_store(client, admin, code)["id"] for code in ("S101", "S102", "S103")]

    pages = _walk(client, admin, "/stores", limit=2)
    assert [len(page) for page in pages] == [2, 2, 1]
    flat = [store_id for page in pages for store_id in page]
    assert flat[:3] == created[::-1]
    assert len(set(flat)) == 5

    # The seeded staff share one created_at: the id breaks the tie, so no one is lost or repeated.
    staff_pages = _walk(client, admin, "/staff", limit=3)
    assert [len(page) for page in staff_pages] == [3, 3, 2]
    assert len({member for page in staff_pages for member in page}) == len(cast.STAFF)
    client_pages = _walk(client, admin, "/clients", limit=1)
    assert [len(page) for page in client_pages] == [1, 1]


def test_bad_paging_parameters_are_422(client: TestClient, as_member: AsMember) -> None:
    admin = as_member(cast.ADMIN)
    for params in (
        {"cursor": "not a cursor"},
        {"cursor": "bm90LWEtY3Vyc29y"},
        {"cursor": "x" * 300},
        {"limit": 0},
        {"limit": 501},
        {"limit": "many"},
    ):
        response = client.get("/staff", params=params, headers=admin)
        assert response.status_code == 422, params
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["type"] == "/problems/validation"


# --- bad input ----------------------------------------------------------------------------------


def test_duplicates_are_409_and_write_nothing(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    admin = as_member(cast.ADMIN)
    before = _counts(db)
    attempts = [
        ("/stores", {"code": "S001", "name": "重複", "opening_hours": HOURS}),
        (
            "/staff",
            {
                "login": cast.SALES.login,
                "display_name": "重複",
                "role": "sales",
                "store": "S002",
                "password": NEW_PASSWORD,
            },
        ),
        ("/clients", {"name": cast.BILLING.name, "role": "fraud_system"}),
    ]
    for path, body in attempts:
        response = client.post(path, json=body, headers=admin)
        assert response.status_code == 409, path
        assert response.json()["type"] == "/problems/conflict"
    assert _counts(db) == before
    assert not [event for event in _admin_events(db) if "/" in event[2]]


def test_duplicate_caught_by_the_database_is_still_409(
    client: TestClient, as_member: AsMember, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent insert can win between the check and the write: the unique key decides."""

    async def never_taken(*_args: object) -> bool:
        return False

    monkeypatch.setattr(repository, "store_code_taken", never_taken)
    monkeypatch.setattr(repository, "staff_login_taken", never_taken)
    monkeypatch.setattr(repository, "client_name_taken", never_taken)
    admin = as_member(cast.ADMIN)
    before = _counts(db)
    store = {"code": "S002", "name": "重複", "opening_hours": HOURS}
    assert client.post("/stores", json=store, headers=admin).status_code == 409
    staff = {
        "login": cast.AUDITOR.login,
        "display_name": "重複",
        "role": "admin",
        "password": NEW_PASSWORD,
    }
    assert client.post("/staff", json=staff, headers=admin).status_code == 409
    system = {"name": cast.FRAUD.name, "role": "fraud_system"}
    assert client.post("/clients", json=system, headers=admin).status_code == 409
    assert _counts(db) == before
    assert client.get("/stores", headers=admin).status_code == 200


def test_unknown_fields_and_bad_values_are_422_without_echo(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    admin = as_member(cast.ADMIN)
    sales_id = _id_of(client, admin, "/staff", "login", cast.SALES.login)
    billing_id = _id_of(client, admin, "/clients", "name", cast.BILLING.name)
    marker = "ECHO-MARKER-7Q"
    store = {"code": "S010", "name": "店", "opening_hours": HOURS}
    staff = {
        "login": "newbie",
        "display_name": "新人",
        "role": "sales",
        "store": "S001",
        "password": NEW_PASSWORD,
    }
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/stores", {**store, "note": marker}),
        ("POST", "/stores", {**store, "code": marker.lower()}),
        ("POST", "/stores", {**store, "name": marker * 10}),
        ("POST", "/stores", {**store, "name": "   "}),
        ("POST", "/stores", {**store, "opening_hours": {"open": "20:00", "close": "10:00"}}),
        ("POST", "/stores", {**store, "opening_hours": {"open": "9:00", "close": "25:00"}}),
        ("POST", "/stores", {**store, "opening_hours": {**HOURS, "tz": marker}}),
        ("POST", "/staff", {**staff, "password_hash": marker}),
        ("POST", "/staff", {**staff, "role": "billing_system"}),
        ("POST", "/staff", {**staff, "store": None}),
        ("POST", "/staff", {**staff, "role": "auditor"}),
        ("POST", "/staff", {**staff, "store": "S999"}),
        ("POST", "/staff", {**staff, "password": marker[:10]}),
        ("POST", "/staff", {**staff, "password": f"{marker}-newbie"}),
        ("POST", "/staff", {**staff, "login": marker}),
        ("POST", "/staff", {**staff, "active": "yes"}),
        ("PATCH", f"/staff/{sales_id}", {}),
        ("PATCH", f"/staff/{sales_id}", {"login": "renamed"}),
        ("PATCH", f"/staff/{sales_id}", {"display_name": None}),
        ("PATCH", f"/staff/{sales_id}", {"role": "auditor"}),
        ("PATCH", f"/staff/{sales_id}", {"store": None}),
        ("PATCH", f"/staff/{sales_id}", {"password": f"{marker}-sales1"}),
        ("POST", "/clients", {"name": "crm", "role": "sales"}),
        ("POST", "/clients", {"name": marker, "role": "billing_system"}),
        ("POST", "/clients", {"name": "crm", "role": "billing_system", "client_secret": marker}),
        ("PATCH", f"/clients/{billing_id}", {"name": "renamed"}),
        ("PATCH", f"/clients/{billing_id}", {"active": None}),
    ]
    before = _counts(db)
    for method, path, body in cases:
        response = client.request(method, path, json=body, headers=admin)
        assert response.status_code == 422, (method, path, body)
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["type"] == "/problems/validation"
        assert marker not in response.text and marker.lower() not in response.text
    assert _counts(db) == before
    assert _staff_login(client, cast.SALES.login, cast.SALES.password) == 200


# --- who may administer -------------------------------------------------------------------------


def test_only_admins_administer_and_refusals_are_recorded(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    staff_body = {
        "login": "intruder",
        "display_name": "侵入",
        "role": "admin",
        "password": NEW_PASSWORD,
    }
    reads: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/staff", None),
        ("GET", "/clients", None),
    ]
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/stores", None),
        ("POST", "/stores", {"code": "S066", "name": "店", "opening_hours": HOURS}),
        ("POST", "/staff", staff_body),
        ("PATCH", "/staff/anyone", {"active": False}),
        ("POST", "/clients", {"name": "intruder", "role": "fraud_system"}),
        ("PATCH", "/clients/anyone", {"active": False}),
        ("POST", "/clients/anyone/secret", None),
        # Refused before the body or the parameters are even looked at.
        ("POST", "/stores", {"unknown": "field"}),
        ("GET", "/staff?limit=0&cursor=bad", None),
    ]
    approvals: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/staff/anyone/approve", None),
        ("POST", "/clients/anyone/approve", None),
    ]
    before = _counts(db)
    refused = {
        cast.SALES.login: (as_member(cast.SALES), reads + writes + approvals),
        cast.MANAGER.login: (as_member(cast.MANAGER), reads + writes + approvals),
        cast.BILLING.name: (login_client(client, cast.BILLING), reads + writes + approvals),
        # Auditors read the lists and approve, but change nothing.
        cast.AUDITOR.login: (as_member(cast.AUDITOR), writes[:-1]),
        # Admins change, but never approve.
        cast.ADMIN.login: (as_member(cast.ADMIN), approvals),
    }
    for headers, requests in refused.values():
        for method, path, body in requests:
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 403, (method, path)
            assert response.json()["type"] == "/problems/forbidden"
    for method, path, body in reads + writes + approvals:
        assert client.request(method, path, json=body).status_code == 401

    assert _counts(db) == before
    events = _admin_events(db)
    for name, (_headers, requests) in refused.items():
        denied = [event for event in events if event[0] == name and event[3] == "denied"]
        assert len(denied) == len(requests), name


def test_auditors_read_the_staff_and_client_lists(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    auditor = as_member(cast.AUDITOR)
    staff = client.get("/staff", params={"limit": 500}, headers=auditor)
    clients = client.get("/clients", headers=auditor)
    assert staff.status_code == clients.status_code == 200
    assert {item["login"] for item in staff.json()["items"]} == {m.login for m in cast.STAFF}
    assert {item["name"] for item in clients.json()["items"]} == {c.name for c in cast.CLIENTS}
    reads = [event for event in _admin_events(db) if event[0] == cast.AUDITOR.login]
    assert {(event[2], event[3]) for event in reads} == {
        ("staff", "allowed"),
        ("clients", "allowed"),
    }


# --- staff --------------------------------------------------------------------------------------


def test_admin_actions_are_recorded_without_passwords_or_secrets(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    admin = as_member(cast.ADMIN)
    member = _post_staff(client, admin, "newbie")
    second_password = "another-password-of-theirs"
    patched = client.patch(
        f"/staff/{member['id']}",
        json={"display_name": "テスト 次郎", "password": second_password, "active": True},
        headers=admin,
    )
    assert patched.status_code == 200
    system = _post_client(client, admin, "crm-sync")
    rotated = client.post(f"/clients/{system['id']}/secret", headers=admin).json()
    client.get("/staff", headers=admin)
    client.get("/clients", headers=admin)

    events = _admin_events(db)
    assert {event[:2] + event[3:4] for event in events} == {("admin", "admin", "allowed")}
    changes = [(event[2], event[4]) for event in events]
    assert changes[:2] == [
        (f"staff/{member['id']}", ["pending_approval"]),
        (f"staff/{member['id']}", ["display_name", "password", "pending_approval"]),
    ]
    assert (f"clients/{system['id']}", ["pending_approval"]) in changes
    secret_change = ["client_secret", "pending_approval"]
    assert (f"clients/{system['id']}/secret", secret_change) in changes
    assert {"staff", "clients"} <= {resource for resource, _ in changes}

    with db.connect() as connection:
        rows = connection.execute(select(*AccessEvent.__table__.columns)).all()
    everything = " ".join(str(tuple(row)) for row in rows)
    for secret in (
        NEW_PASSWORD,
        second_password,
        system["client_secret"],
        rotated["client_secret"],
    ):
        assert secret not in everything


def test_staff_passwords_are_write_only(client: TestClient, as_member: AsMember) -> None:
    admin = as_member(cast.ADMIN)
    created = _post_staff(client, admin, "newbie")
    expected = {
        "id",
        "login",
        "display_name",
        "role",
        "store",
        "active",
        "pending_approval",
        "created_at",
        "updated_at",
    }
    assert set(created) == expected
    patched = client.patch(
        f"/staff/{created['id']}", json={"password": "yet-another-password"}, headers=admin
    )
    assert set(patched.json()) == expected
    listed = client.get("/staff", headers=admin)
    assert all(set(item) == expected for item in listed.json()["items"])
    for text in (str(created), patched.text, listed.text):
        assert "password" not in text and "argon2" not in text


def test_new_staff_member_logs_in_once_an_auditor_approves(
    client: TestClient, as_member: AsMember
) -> None:
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    created = _post_staff(client, admin, "newbie.mgr", role="manager", store="S002")
    assert (created["role"], created["store"], created["active"]) == ("manager", "S002", True)
    assert created["pending_approval"] is True
    assert _staff_login(client, "newbie.mgr", NEW_PASSWORD) == 401

    _approve(client, auditor, f"staff/{created['id']}")
    token = client.post("/auth/token", data=_staff_form("newbie.mgr", NEW_PASSWORD)).json()
    assert token["password_change_required"] is True
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    me = client.get("/auth/me", headers=headers).json()
    assert (me["login"], me["role"], me["store"]) == ("newbie.mgr", "manager", "S002")


def test_deactivated_staff_lose_their_tokens_and_cannot_log_in(
    client: TestClient, as_member: AsMember
) -> None:
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    sales = as_member(cast.SALES)
    assert _me(client, sales) == 200
    sales_id = _id_of(client, admin, "/staff", "login", cast.SALES.login)

    # Taking access away needs no approval: it takes effect at once.
    response = client.patch(f"/staff/{sales_id}", json={"active": False}, headers=admin)
    assert response.status_code == 200 and response.json()["active"] is False
    assert response.json()["pending_approval"] is False
    assert _me(client, sales) == 401
    assert _staff_login(client, cast.SALES.login, cast.SALES.password) == 401

    # Giving it back does.
    again = client.patch(f"/staff/{sales_id}", json={"active": True}, headers=admin)
    assert again.json()["pending_approval"] is True
    assert _staff_login(client, cast.SALES.login, cast.SALES.password) == 401
    _approve(client, auditor, f"staff/{sales_id}")
    assert _staff_login(client, cast.SALES.login, cast.SALES.password) == 200
    assert _me(client, sales) == 401


def test_password_change_by_admin_ends_existing_tokens(
    client: TestClient, as_member: AsMember
) -> None:
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    sales = as_member(cast.SALES)
    sales_id = _id_of(client, admin, "/staff", "login", cast.SALES.login)
    response = client.patch(f"/staff/{sales_id}", json={"password": NEW_PASSWORD}, headers=admin)
    assert response.status_code == 200
    assert response.json()["pending_approval"] is True
    assert _me(client, sales) == 401
    assert _staff_login(client, cast.SALES.login, cast.SALES.password) == 401
    assert _staff_login(client, cast.SALES.login, NEW_PASSWORD) == 401
    _approve(client, auditor, f"staff/{sales_id}")
    assert _staff_login(client, cast.SALES.login, cast.SALES.password) == 401
    assert _staff_login(client, cast.SALES.login, NEW_PASSWORD) == 200


def test_role_or_store_change_ends_existing_tokens(client: TestClient, as_member: AsMember) -> None:
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    technician, manager, sales = (
        as_member(cast.TECHNICIAN),
        as_member(cast.MANAGER),
        as_member(cast.SALES),
    )
    ids = {
        item["login"]: item["id"]
        for item in client.get("/staff", params={"limit": 500}, headers=admin).json()["items"]
    }

    promoted = client.patch(f"/staff/{ids['tech1']}", json={"role": "manager"}, headers=admin)
    assert promoted.status_code == 200 and promoted.json()["role"] == "manager"
    assert promoted.json()["pending_approval"] is True
    assert _me(client, technician) == 401
    assert _staff_login(client, cast.TECHNICIAN.login, cast.TECHNICIAN.password) == 401
    _approve(client, auditor, f"staff/{ids['tech1']}")
    me = client.get("/auth/me", headers=login(client, cast.TECHNICIAN)).json()
    assert me["role"] == "manager"

    moved = client.patch(f"/staff/{ids['manager1']}", json={"store": "S002"}, headers=admin)
    assert moved.status_code == 200 and moved.json()["store"] == "S002"
    assert _me(client, manager) == 401
    _approve(client, auditor, f"staff/{ids['manager1']}")
    me = client.get("/auth/me", headers=login(client, cast.MANAGER)).json()
    assert me["store"] == "S002"

    to_admin = {"role": "admin", "store": None}
    moved_out = client.patch(f"/staff/{ids['sales2']}", json=to_admin, headers=admin)
    assert moved_out.status_code == 200 and moved_out.json()["store"] is None

    # A change that grants nothing new leaves the person's tokens alone, and needs no approval.
    renamed = client.patch(f"/staff/{ids['sales1']}", json={"display_name": "改名"}, headers=admin)
    assert renamed.status_code == 200 and renamed.json()["pending_approval"] is False
    assert _me(client, sales) == 200


def test_admin_cannot_lock_themselves_out(client: TestClient, as_member: AsMember) -> None:
    admin = as_member(cast.ADMIN)
    own_id = client.get("/auth/me", headers=admin).json()["id"]
    for body in ({"active": False}, {"role": "sales", "store": "S001"}, {"password": NEW_PASSWORD}):
        response = client.patch(f"/staff/{own_id}", json=body, headers=admin)
        assert response.status_code == 409
        assert response.json()["type"] == "/problems/conflict"
    assert _me(client, admin) == 200
    renamed = client.patch(f"/staff/{own_id}", json={"display_name": "管理者"}, headers=admin)
    assert renamed.status_code == 200 and renamed.json()["active"] is True
    assert renamed.json()["pending_approval"] is False


def test_unknown_ids_are_404(client: TestClient, as_member: AsMember) -> None:
    admin = as_member(cast.ADMIN)
    unknown = "00000000-0000-4000-8000-000000000000"
    auditor = as_member(cast.AUDITOR)
    for method, path, body, headers in (
        ("PATCH", f"/staff/{unknown}", {"active": False}, admin),
        ("PATCH", f"/clients/{unknown}", {"active": False}, admin),
        ("POST", f"/clients/{unknown}/secret", None, admin),
        ("POST", f"/staff/{unknown}/approve", None, auditor),
        ("POST", f"/clients/{unknown}/approve", None, auditor),
    ):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 404, path
        assert response.json()["type"] == "/problems/not-found"


# --- system clients -----------------------------------------------------------------------------


def test_client_secret_is_shown_once_and_rotation_retires_the_old_one(
    client: TestClient, as_member: AsMember
) -> None:
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    created = _post_client(client, admin, "crm-sync", role="fraud_system")
    assert created["client_id"] == "crm-sync" and created["role"] == "fraud_system"
    assert created["pending_approval"] is True
    first_secret = created["client_secret"]
    assert _client_login(client, "crm-sync", first_secret) == 401
    _approve(client, auditor, f"clients/{created['id']}")
    assert _client_login(client, "crm-sync", first_secret) == 200
    old_headers = _bearer(client, _client_form("crm-sync", first_secret))
    assert _me(client, old_headers) == 200

    rotated = client.post(f"/clients/{created['id']}/secret", headers=admin)
    assert rotated.status_code == 200
    assert rotated.json()["pending_approval"] is True
    new_secret = rotated.json()["client_secret"]
    assert new_secret != first_secret
    assert _me(client, old_headers) == 401
    assert _client_login(client, "crm-sync", first_secret) == 401
    assert _client_login(client, "crm-sync", new_secret) == 401
    _approve(client, auditor, f"clients/{created['id']}")
    assert _client_login(client, "crm-sync", first_secret) == 401
    assert _client_login(client, "crm-sync", new_secret) == 200

    listed = client.get("/clients", headers=admin)
    patched = client.patch(f"/clients/{created['id']}", json={"active": True}, headers=admin)
    for text in (listed.text, patched.text):
        assert "client_secret" not in text and new_secret not in text


def test_client_deactivation_or_role_change_ends_its_tokens(
    client: TestClient, as_member: AsMember
) -> None:
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    billing, fraud = login_client(client, cast.BILLING), login_client(client, cast.FRAUD)
    billing_id = _id_of(client, admin, "/clients", "name", cast.BILLING.name)
    fraud_id = _id_of(client, admin, "/clients", "name", cast.FRAUD.name)

    off = client.patch(f"/clients/{billing_id}", json={"active": False}, headers=admin)
    assert off.status_code == 200 and off.json()["active"] is False
    assert off.json()["pending_approval"] is False
    assert _me(client, billing) == 401
    assert _client_login(client, cast.BILLING.name, cast.BILLING.secret) == 401
    back = client.patch(f"/clients/{billing_id}", json={"active": True}, headers=admin)
    assert back.json()["pending_approval"] is True
    assert _client_login(client, cast.BILLING.name, cast.BILLING.secret) == 401
    _approve(client, auditor, f"clients/{billing_id}")
    assert _client_login(client, cast.BILLING.name, cast.BILLING.secret) == 200

    changed = client.patch(f"/clients/{fraud_id}", json={"role": "billing_system"}, headers=admin)
    assert changed.status_code == 200 and changed.json()["pending_approval"] is True
    assert _me(client, fraud) == 401
    assert _client_login(client, cast.FRAUD.name, cast.FRAUD.secret) == 401
    _approve(client, auditor, f"clients/{fraud_id}")
    me = client.get("/auth/me", headers=login_client(client, cast.FRAUD)).json()
    assert me["role"] == "billing_system"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # the document needs no database
def test_openapi_declares_the_admin_errors(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("/stores", "post"): {"401", "403", "409", "422"},
        ("/staff", "get"): {"401", "403", "422"},
        ("/staff/{staff_id}", "patch"): {"401", "403", "404", "409", "422"},
        ("/clients/{client_id}/secret", "post"): {"401", "403", "404"},
        ("/staff/{staff_id}/approve", "post"): {"401", "403", "404", "409"},
        ("/clients/{client_id}/approve", "post"): {"401", "403", "404", "409"},
    }
    for (path, method), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (path, method)
        for status in statuses:
            assert PROBLEM in responses[status]["content"]
