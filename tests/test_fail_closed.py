"""Promise 2 on the hot path: a customer read whose access event cannot be written, or whose
COMMIT fails, answers 503 and discloses nothing; a refused read whose denied event cannot be
written answers 503 too."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from tests import cast
from tests.test_unit_of_work import Trap, assert_unavailable, commit_trap, insert_trap
from tests.world import purpose, register_customer

__all__ = ["commit_trap", "insert_trap"]  # fixtures used below


def _events(db: Engine) -> int:
    with db.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM access_event")).scalar_one())


def _assert_nothing_disclosed(response_text: str, body: dict[str, object]) -> None:
    for key in ("name", "name_kana", "phone", "email", "address", "date_of_birth"):
        value = str(body[key])
        assert value not in response_text
        assert value.split(" ")[0] not in response_text


def test_read_whose_commit_fails_discloses_nothing(
    client: TestClient,
    as_member: Callable[..., dict[str, str]],
    db: Engine,
    commit_trap: Trap,
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=11)
    before = _events(db)
    commit_trap.set()
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=customer.visit_id)
    )
    commit_trap.remove()
    assert_unavailable(response, "audit-unavailable")
    _assert_nothing_disclosed(response.text, customer.body)
    assert _events(db) == before


def test_read_whose_event_cannot_be_written_discloses_nothing(
    client: TestClient,
    as_member: Callable[..., dict[str, str]],
    db: Engine,
    insert_trap: Trap,
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=12)
    before = _events(db)
    insert_trap.set()
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=customer.visit_id)
    )
    search = client.post(
        "/customers/search",
        json={"phone": customer.body["phone"]},
        headers=purpose(sales, "support"),
    )
    insert_trap.remove()
    assert_unavailable(response, "audit-unavailable")
    assert_unavailable(search, "audit-unavailable")
    _assert_nothing_disclosed(response.text, customer.body)
    assert customer.id not in search.text
    assert _events(db) == before
    # Once the log is writable again, the same read succeeds and is recorded.
    again = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=customer.visit_id)
    )
    assert again.status_code == 200
    assert _events(db) == before + 1


def test_failed_create_leaves_nothing_behind(
    client: TestClient,
    as_member: Callable[..., dict[str, str]],
    db: Engine,
    commit_trap: Trap,
) -> None:
    from tests.world import customer_body, open_visit

    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales)
    commit_trap.set()
    response = client.post(
        "/customers",
        json=customer_body(13),
        headers=purpose(sales, "contract", visit=visit_id),
    )
    commit_trap.remove()
    assert_unavailable(response, "audit-unavailable")
    with db.connect() as connection:
        for table in ("customer", "customer_key", "consent_event"):
            count = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            assert count == 0, table
        attached = connection.execute(
            text("SELECT customer_id FROM visit WHERE id = :id"), {"id": visit_id}
        ).scalar_one()
        assert attached is None


def test_denied_read_whose_event_cannot_be_written_gets_503(
    client: TestClient,
    as_member: Callable[..., dict[str, str]],
    db: Engine,
    insert_trap: Trap,
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=14)
    insert_trap.set()
    response = client.get(f"/customers/{customer.id}", headers=purpose(sales, "fraud_prevention"))
    insert_trap.remove()
    assert_unavailable(response, "audit-unavailable")
