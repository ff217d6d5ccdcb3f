"""Separation of duties: no admin reaches customer data alone (SPEC, "Separation of duties").

Every admin change that opens a way to customer data leaves the account pending until an auditor
approves it; pending accounts cannot log in and their older tokens end; auditors are made only
on the machine; no one approves a change to their own account.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, text

from app.models import AccessEvent, Staff
from app.models.base import new_id, utcnow
from tests import cast
from tests.accounts import TEMPORARY_PASSWORD, approve, bearer, first_login, hire
from tests.conftest import login, login_client
from tests.world import purpose, register_customer

AsMember = Callable[..., dict[str, str]]
OWN_PASSWORD = "my-own-chosen-passphrase"


def _staff_id(db: Engine, login_name: str) -> str:
    with db.connect() as connection:
        return str(
            connection.execute(select(Staff.id).where(Staff.login == login_name)).scalar_one()
        )


def _token(client: TestClient, form: dict[str, str]) -> Any:
    return client.post("/auth/token", data=form)


def _staff_form(login_name: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": login_name, "password": password}


def _client_form(name: str, secret: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": name, "client_secret": secret}


def _admin_events(db: Engine) -> list[dict[str, Any]]:
    statement = (
        select(
            AccessEvent.actor,
            AccessEvent.role,
            AccessEvent.resource,
            AccessEvent.outcome,
            AccessEvent.denial,
            AccessEvent.changed_fields,
        )
        .where(AccessEvent.action == "admin")
        .order_by(AccessEvent.at, AccessEvent.chain, AccessEvent.seq)
    )
    with db.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(statement)]


def test_every_admin_path_to_customer_data_waits_for_an_auditor(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    """A data client, a new manager, a new auditor, a password reset: none of them works until
    an auditor approves it, and the admin never sees a customer field."""
    customer = register_customer(client, as_member(cast.MANAGER), seed=11)
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    record = f"/customers/{customer.id}"
    manager_id = _staff_id(db, cast.MANAGER.login)
    manager_before = as_member(cast.MANAGER)

    # 1. A fraud_system client would read full document numbers.
    system = client.post("/clients", json={"name": "shadow", "role": "fraud_system"}, headers=admin)
    assert system.status_code == 201 and system.json()["pending_approval"] is True
    secret = system.json()["client_secret"]
    assert _token(client, _client_form("shadow", secret)).status_code == 401
    # 2. A manager of the admin's own making.
    body = {
        "login": "shadow.mgr",
        "display_name": "影 店長",
        "role": "manager",
        "store": "S001",
        "password": TEMPORARY_PASSWORD,
    }
    new_manager = client.post("/staff", json=body, headers=admin)
    assert new_manager.status_code == 201 and new_manager.json()["pending_approval"] is True
    assert _token(client, _staff_form("shadow.mgr", TEMPORARY_PASSWORD)).status_code == 401
    # 3. An auditor, to approve the rest: not through the API at all.
    auditor_body = {**body, "login": "shadow.audit", "role": "auditor", "store": None}
    assert client.post("/staff", json=auditor_body, headers=admin).status_code == 422
    sales_id = _staff_id(db, cast.SALES.login)
    patch = client.patch(
        f"/staff/{sales_id}", json={"role": "auditor", "store": None}, headers=admin
    )
    assert patch.status_code == 422
    # 4. A real manager's password, reset to log in as them.
    reset = client.patch(
        f"/staff/{manager_id}", json={"password": TEMPORARY_PASSWORD}, headers=admin
    )
    assert reset.status_code == 200 and reset.json()["pending_approval"] is True
    assert _token(client, _staff_form(cast.MANAGER.login, TEMPORARY_PASSWORD)).status_code == 401
    assert client.get("/auth/me", headers=manager_before).status_code == 401
    # The admin itself has no customer data under any purpose.
    for reason_purpose in ("fraud_prevention", "subject_request", "audit"):
        headers = purpose(admin, reason_purpose, reason="管理者による確認のためのアクセス")
        assert client.get(record, headers=headers).status_code == 403

    with db.connect() as connection:
        assert (
            connection.execute(
                text("SELECT count(*) FROM staff WHERE login = 'shadow.audit'")
            ).scalar()
            == 0
        )

    # The auditor approves: now each path works, and only now.
    approve(client, auditor, f"clients/{system.json()['id']}")
    fraud = bearer(_token(client, _client_form("shadow", secret)).json()["access_token"])
    read = client.get(record, headers=purpose(fraud, "fraud_prevention"))
    assert read.status_code == 200 and "document_number" in read.json()

    approve(client, auditor, f"staff/{new_manager.json()['id']}")
    manager = first_login(client, "shadow.mgr", OWN_PASSWORD)
    reason = "本人確認書類の確認依頼のため"
    assert client.get(record, headers=purpose(manager, "support", reason=reason)).status_code == 200

    approve(client, auditor, f"staff/{manager_id}")
    reset_token = _token(client, _staff_form(cast.MANAGER.login, TEMPORARY_PASSWORD)).json()
    assert reset_token["password_change_required"] is True

    # Each change and each approval is an admin event; changes carry the pending mark.
    events = _admin_events(db)
    changes = [
        e for e in events if e["changed_fields"] and "pending_approval" in e["changed_fields"]
    ]
    approvals = [e for e in changes if e["resource"].endswith("/approve")]
    assert [(e["actor"], e["role"], e["outcome"]) for e in approvals] == [
        (cast.AUDITOR.login, "auditor", "allowed")
    ] * 3
    assert {e["resource"] for e in approvals} == {
        f"clients/{system.json()['id']}/approve",
        f"staff/{new_manager.json()['id']}/approve",
        f"staff/{manager_id}/approve",
    }
    made = [e for e in changes if e not in approvals]
    assert [(e["actor"], e["resource"]) for e in made] == [
        ("admin", f"clients/{system.json()['id']}"),
        ("admin", f"staff/{new_manager.json()['id']}"),
        ("admin", f"staff/{manager_id}"),
    ]
    assert made[-1]["changed_fields"] == ["password", "pending_approval"]


def test_pending_accounts_lose_their_tokens(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    """The token check itself refuses a pending holder (not only the epoch bump)."""
    sales, billing = as_member(cast.SALES), login_client(client, cast.BILLING)
    with db.begin() as connection:
        connection.execute(text("UPDATE staff SET pending_approval = true WHERE login = 'sales1'"))
        connection.execute(
            text("UPDATE system_client SET pending_approval = true WHERE name = 'billing'")
        )
    assert client.get("/auth/me", headers=sales).status_code == 401
    assert client.get("/auth/me", headers=billing).status_code == 401
    assert _token(client, _staff_form(cast.SALES.login, cast.SALES.password)).status_code == 401
    assert _token(client, _client_form(cast.BILLING.name, cast.BILLING.secret)).status_code == 401


def test_no_one_approves_a_change_to_their_own_account(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    # A second auditor, as `shopvault create-auditor` makes one.
    with db.begin() as connection:
        connection.execute(
            insert(Staff).values(
                id=new_id(),
                login="auditor2",
                display_name="監査 二郎",
                role="auditor",
                store_id=None,
                password_hash=cast.seed_rows()[Staff][1]["password_hash"],
                active=True,
                pending_approval=False,
                auth_epoch=0,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    own_id = _staff_id(db, cast.AUDITOR.login)
    other_id = _staff_id(db, "auditor2")

    # Nothing pending on one's own account, and still refused as one's own (recorded).
    refused = client.post(f"/staff/{own_id}/approve", headers=auditor)
    assert refused.status_code == 403
    assert refused.json()["type"] == "/problems/own-account-approval"

    # The admin resets the first auditor's password: that auditor is out until the other
    # auditor approves (the approver never is the one whose account changed).
    client.patch(f"/staff/{own_id}", json={"password": TEMPORARY_PASSWORD}, headers=admin)
    assert client.get("/auth/me", headers=auditor).status_code == 401
    other = bearer(
        _token(client, _staff_form("auditor2", cast.AUDITOR.password)).json()["access_token"]
    )
    approve(client, other, f"staff/{own_id}")
    first_login(client, cast.AUDITOR.login, OWN_PASSWORD)

    denied = [e for e in _admin_events(db) if e["outcome"] == "denied"]
    assert [(e["actor"], e["resource"], e["denial"]) for e in denied] == [
        (cast.AUDITOR.login, f"staff/{own_id}/approve", "own-account-approval")
    ]
    approved = [e for e in _admin_events(db) if e["resource"] == f"staff/{own_id}/approve"]
    assert [(e["actor"], e["outcome"]) for e in approved][-1] == ("auditor2", "allowed")
    assert other_id != own_id


def test_auditors_list_what_waits_for_them(client: TestClient, as_member: AsMember) -> None:
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    body = {
        "login": "waiting",
        "display_name": "待機 中",
        "role": "sales",
        "store": "S002",
        "password": TEMPORARY_PASSWORD,
    }
    waiting = client.post("/staff", json=body, headers=admin).json()
    crm = client.post("/clients", json={"name": "crm", "role": "billing_system"}, headers=admin)

    def logins(params: dict[str, Any]) -> set[str]:
        response = client.get("/staff", params={"limit": 500, **params}, headers=auditor)
        assert response.status_code == 200, response.text
        return {item["login"] for item in response.json()["items"]}

    def names(params: dict[str, Any]) -> set[str]:
        response = client.get("/clients", params=params, headers=auditor)
        assert response.status_code == 200, response.text
        return {item["name"] for item in response.json()["items"]}

    assert logins({"pending": "true"}) == {"waiting"}
    assert logins({"pending": "false"}) == {m.login for m in cast.STAFF}
    assert logins({}) == {"waiting", *(m.login for m in cast.STAFF)}
    assert names({"pending": "true"}) == {"crm"}
    assert names({"pending": "false"}) == {c.name for c in cast.CLIENTS}
    assert client.get("/staff", params={"pending": "maybe"}, headers=auditor).status_code == 422

    approve(client, auditor, f"staff/{waiting['id']}")
    approve(client, auditor, f"clients/{crm.json()['id']}")
    assert logins({"pending": "true"}) == set()
    assert names({"pending": "true"}) == set()


def test_approving_what_is_not_pending_is_409(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    auditor = as_member(cast.AUDITOR)
    sales_id = _staff_id(db, cast.SALES.login)
    admin = as_member(cast.ADMIN)
    billing_id = next(
        item["id"]
        for item in client.get("/clients", headers=admin).json()["items"]
        if item["name"] == cast.BILLING.name
    )
    for path in (f"/staff/{sales_id}/approve", f"/clients/{billing_id}/approve"):
        response = client.post(path, headers=auditor)
        assert response.status_code == 409, path
        assert response.json()["type"] == "/problems/conflict"
    # Approving twice: the second finds nothing pending.
    created = hire(client, admin, auditor, "twice", "sales", "S001")
    again = client.post(f"/staff/{created['id']}/approve", headers=auditor)
    assert again.status_code == 409


def test_a_pending_member_is_not_let_in_even_with_the_right_password(
    client: TestClient, as_member: AsMember
) -> None:
    admin = as_member(cast.ADMIN)
    body = {
        "login": "newbie",
        "display_name": "新人",
        "role": "technician",
        "store": "S001",
        "password": TEMPORARY_PASSWORD,
    }
    assert client.post("/staff", json=body, headers=admin).status_code == 201
    right = _token(client, _staff_form("newbie", TEMPORARY_PASSWORD))
    wrong = _token(client, _staff_form("newbie", "not-the-password"))
    assert right.status_code == wrong.status_code == 401
    assert right.json()["type"] == wrong.json()["type"] == "/problems/invalid-credentials"
    # Operators' and seeded accounts need no approval.
    assert (
        "access_token" in _token(client, _staff_form(cast.SALES.login, cast.SALES.password)).json()
    )
    login(client, cast.AUDITOR)
