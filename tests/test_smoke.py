from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests import cast


def test_login_and_me(
    client: TestClient, as_member: Callable[..., dict[str, str]], db: Engine
) -> None:
    headers = as_member(cast.SALES, terminal="POS-01")
    response = client.get("/auth/me", headers=headers)
    assert response.status_code == 200
    assert response.json()["login"] == "sales1"
    assert response.json()["store"] == "S001"
    with db.connect() as connection:
        rows = connection.execute(
            text("SELECT actor, action, terminal, outcome FROM access_event")
        ).all()
    assert ("sales1", "login", "POS-01", "allowed") in [tuple(r) for r in rows]
