"""A password set by an admin is temporary: it ends 72 hours after it was set, and a token got
with it works only for POST /auth/password, GET /auth/me and POST /auth/logout."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jose import jwt
from sqlalchemy import Engine, select, text, update

from app.models import AccessEvent, Staff
from app.models.base import utcnow
from tests import cast
from tests.accounts import TEMPORARY_PASSWORD, bearer, hire
from tests.world import purpose, register_customer

AsMember = Callable[..., dict[str, str]]
OWN_PASSWORD = "a-passphrase-of-my-own"


def _temporary_login(client: TestClient, login_name: str) -> Any:
    form = {"grant_type": "password", "username": login_name, "password": TEMPORARY_PASSWORD}
    return client.post("/auth/token", data=form)


@pytest.fixture
def newbie(client: TestClient, as_member: AsMember) -> dict[str, Any]:
    """A sales member an admin created and an auditor approved (temporary password)."""
    return hire(client, as_member(cast.ADMIN), as_member(cast.AUDITOR), "newbie", "sales", "S001")


def test_a_temporary_password_gives_a_token_for_changing_it_only(
    client: TestClient, as_member: AsMember, db: Engine, newbie: dict[str, Any]
) -> None:
    customer = register_customer(client, as_member(cast.SALES), seed=3)
    response = _temporary_login(client, "newbie")
    assert response.status_code == 200
    body = response.json()
    assert body["password_change_required"] is True
    assert jwt.get_unverified_claims(body["access_token"])["password_change_required"] is True
    token = bearer(body["access_token"])

    me = client.get("/auth/me", headers=token)
    assert me.status_code == 200 and me.json()["password_change_required"] is True

    # Every other route refuses it, the refusal recorded; a body is not even looked at.
    refused = [
        client.get("/visits", headers=token),
        client.post("/visits", json={"type": "inquiry"}, headers=token),
        client.post("/visits", json={"type": "no-such-type", "extra": 1}, headers=token),
        client.get(f"/customers/{customer.id}", headers=purpose(token, "contract")),
        client.post("/customers/search", json={"phone": "090"}, headers=purpose(token, "contract")),
    ]
    for answer in refused:
        assert answer.status_code == 403, answer.text
        assert answer.json()["type"] == "/problems/password-change-required"
    with db.connect() as connection:
        denials = connection.execute(
            select(AccessEvent.actor, AccessEvent.resource, AccessEvent.denial)
            .where(AccessEvent.outcome == "denied")
            .order_by(AccessEvent.at, AccessEvent.chain, AccessEvent.seq)
        ).all()
    assert [tuple(row) for row in denials] == [
        ("newbie", "visits", "password-change-required"),
        ("newbie", "visits", "password-change-required"),
        ("newbie", "visits", "password-change-required"),
        ("newbie", "customers/{customer_id}", "password-change-required"),
        ("newbie", "customers/search", "password-change-required"),
    ]

    # Setting one's own password ends the temporary token and gives a full one.
    changed = client.post(
        "/auth/password",
        json={"current": TEMPORARY_PASSWORD, "new": OWN_PASSWORD},
        headers=token,
    )
    assert changed.status_code == 200, changed.text
    assert "password_change_required" not in changed.json()
    full = bearer(changed.json()["access_token"])
    assert client.get("/auth/me", headers=token).status_code == 401
    assert client.get("/auth/me", headers=full).json()["password_change_required"] is False
    assert client.get("/visits", headers=full).status_code == 200
    with db.connect() as connection:
        expires = connection.execute(
            select(Staff.password_expires_at).where(Staff.login == "newbie")
        ).scalar_one()
    assert expires is None
    assert _temporary_login(client, "newbie").status_code == 401
    form = {"grant_type": "password", "username": "newbie", "password": OWN_PASSWORD}
    again = client.post("/auth/token", data=form)
    assert again.status_code == 200 and "password_change_required" not in again.json()


def test_a_temporary_token_may_log_out(client: TestClient, newbie: dict[str, Any]) -> None:
    token = bearer(_temporary_login(client, "newbie").json()["access_token"])
    assert client.post("/auth/logout", headers=token).status_code == 204
    assert client.get("/auth/me", headers=token).status_code == 401


def test_an_admin_set_password_ends_72_hours_after_it_was_set(
    client: TestClient, as_member: AsMember, db: Engine, newbie: dict[str, Any]
) -> None:
    admin, auditor = as_member(cast.ADMIN), as_member(cast.AUDITOR)
    with db.connect() as connection:
        expires, created = connection.execute(
            select(Staff.password_expires_at, Staff.created_at).where(Staff.login == "newbie")
        ).one()
    assert expires == created + timedelta(hours=72)

    # A password reset sets a new 72 hours from its own time.
    reset = client.patch(
        f"/staff/{newbie['id']}", json={"password": TEMPORARY_PASSWORD}, headers=admin
    )
    client.post(f"/staff/{newbie['id']}/approve", headers=auditor)
    with db.connect() as connection:
        expires = connection.execute(
            select(Staff.password_expires_at).where(Staff.login == "newbie")
        ).scalar_one()
    reset_at = datetime.fromisoformat(reset.json()["updated_at"])
    assert expires == reset_at + timedelta(hours=72)

    def expire_at(moment: Any) -> None:
        with db.begin() as connection:
            connection.execute(
                update(Staff).where(Staff.login == "newbie").values(password_expires_at=moment)
            )

    expire_at(utcnow() + timedelta(minutes=1))
    assert _temporary_login(client, "newbie").status_code == 200
    expire_at(utcnow() - timedelta(seconds=1))
    expired = _temporary_login(client, "newbie")
    assert expired.status_code == 401
    assert expired.json()["type"] == "/problems/invalid-credentials"


def test_operator_and_own_passwords_are_not_temporary(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    with db.connect() as connection:
        assert (
            connection.execute(
                text("SELECT count(*) FROM staff WHERE password_expires_at IS NOT NULL")
            ).scalar()
            == 0
        )
    for member in (cast.ADMIN, cast.AUDITOR, cast.SALES):
        me = client.get("/auth/me", headers=as_member(member)).json()
        assert me["password_change_required"] is False
