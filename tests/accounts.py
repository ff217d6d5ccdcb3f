"""The maker–checker flow for tests that need a new account: an admin makes it, an auditor
approves it, and a member's first login replaces the admin's temporary password."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

TEMPORARY_PASSWORD = "temporary-password-from-admin"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def approve(client: TestClient, auditor: dict[str, str], resource: str) -> dict[str, Any]:
    """``resource`` is ``staff/<id>`` or ``clients/<id>``."""
    response = client.post(f"/{resource}/approve", headers=auditor)
    assert response.status_code == 200, response.text
    return dict(response.json())


def hire(
    client: TestClient,
    admin: dict[str, str],
    auditor: dict[str, str],
    login: str,
    role: str,
    store: str | None,
) -> dict[str, Any]:
    """A new member, created by the admin and approved by the auditor (temporary password)."""
    body = {
        "login": login,
        "display_name": "テスト 新人",
        "role": role,
        "store": store,
        "password": TEMPORARY_PASSWORD,
    }
    created = client.post("/staff", json=body, headers=admin)
    assert created.status_code == 201, created.text
    return approve(client, auditor, f"staff/{created.json()['id']}")


def first_login(client: TestClient, login: str, new_password: str) -> dict[str, str]:
    """Log in with the temporary password and set one's own: the headers of the new token."""
    form = {"grant_type": "password", "username": login, "password": TEMPORARY_PASSWORD}
    response = client.post("/auth/token", data=form)
    assert response.status_code == 200, response.text
    assert response.json()["password_change_required"] is True
    changed = client.post(
        "/auth/password",
        json={"current": TEMPORARY_PASSWORD, "new": new_password},
        headers=bearer(response.json()["access_token"]),
    )
    assert changed.status_code == 200, changed.text
    return bearer(changed.json()["access_token"])
