"""``Idempotency-Key``: a POS terminal that retries after a timeout gets the first answer, not a
second record. (``POST /visits`` is covered in test_visits; here ``POST /customers``, and retries
that arrive while the first request is still running, on both routes.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from app.config import Settings
from app.models import AccessEvent, Customer, CustomerKey, IdempotentRequest, Visit
from tests import cast
from tests.test_visits import Call, concurrently
from tests.world import customer_body, open_visit, purpose

AsMember = Callable[..., dict[str, str]]
PROBLEM = "application/problem+json"


def _count(db: Engine, model: type[Any]) -> int:
    with db.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar_one())


def _attached(db: Engine, visit_id: str) -> str | None:
    with db.connect() as connection:
        return connection.execute(
            select(Visit.customer_id).where(Visit.id == visit_id)
        ).scalar_one()


def _creates(db: Engine) -> int:
    with db.connect() as connection:
        statement = select(func.count()).where(
            AccessEvent.action == "create",
            AccessEvent.resource.startswith("customers/"),
            AccessEvent.outcome == "allowed",
        )
        return int(connection.execute(statement).scalar_one())


def _register(
    client: TestClient, headers: dict[str, str], visit_id: str, body: dict[str, Any], key: str
) -> Any:
    return client.post(
        "/customers",
        json=body,
        headers={**purpose(headers, "contract", visit=visit_id), "Idempotency-Key": key},
    )


def test_a_retry_with_the_same_key_gets_the_first_customer(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales)
    body = customer_body(seed=1)

    first = _register(client, sales, visit_id, body, "pos-07:customer-0001")
    assert first.status_code == 201, first.text
    customers, keys, creates = _count(db, Customer), _count(db, CustomerKey), _creates(db)

    retry = _register(client, sales, visit_id, body, "pos-07:customer-0001")
    assert retry.status_code == 201, retry.text
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json() == first.json()
    assert _count(db, Customer) == customers == 1
    assert _count(db, CustomerKey) == keys
    assert _creates(db) == creates == 1
    assert _attached(db, visit_id) == first.json()["id"]


def test_without_a_key_a_retry_is_not_the_first_answer(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales)
    body = customer_body(seed=2)
    headers = purpose(sales, "contract", visit=visit_id)
    assert client.post("/customers", json=body, headers=headers).status_code == 201
    again = client.post("/customers", json=body, headers=headers)
    assert again.status_code != 201
    assert _count(db, Customer) == 1


def test_the_same_key_with_another_body_is_a_mismatch(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales)
    body = customer_body(seed=3)
    first = _register(client, sales, visit_id, body, "terminal-3.customer-42")
    assert first.status_code == 201, first.text

    other_phone = "080-5555-0199"
    for changed in (
        {**body, "phone": other_phone},
        {**body, "consents": {"marketing_email": True, "marketing_sms": False}},
        customer_body(seed=4),
    ):
        response = _register(client, sales, visit_id, changed, "terminal-3.customer-42")
        assert response.status_code == 409, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["type"].endswith("/problems/idempotency-mismatch")
        for value in (other_phone, "08055550199", body["name"], changed["name"]):
            assert value not in response.text
    assert _count(db, Customer) == 1
    assert _creates(db) == 1


def test_the_same_key_and_body_in_another_visit_is_a_mismatch(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    body = customer_body(seed=5)
    first = _register(client, sales, open_visit(client, sales), body, "terminal-3.customer-43")
    assert first.status_code == 201, first.text
    again = _register(client, sales, open_visit(client, sales), body, "terminal-3.customer-43")
    assert again.status_code == 409, again.text
    assert again.json()["type"].endswith("/problems/idempotency-mismatch")
    assert _count(db, Customer) == 1


def test_a_malformed_key_is_400_and_registers_nobody(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales)
    body = customer_body(seed=5)
    for key in ("short", "has spaces here", "semi;colon;key", "k" * 129):
        response = _register(client, sales, visit_id, body, key)
        assert response.status_code == 400, response.text
        assert response.json()["type"].endswith("/problems/bad-header")
    assert _count(db, Customer) == 0
    assert _count(db, CustomerKey) == 0
    assert _attached(db, visit_id) is None
    # The visit is untouched and still serves the registration.
    assert _register(client, sales, visit_id, body, "a-good-key-1").status_code == 201


def test_keys_belong_to_their_caller(client: TestClient, as_member: AsMember, db: Engine) -> None:
    key = "shared-customer-key"
    ids = []
    for member, seed in ((cast.SALES, 6), (cast.MANAGER, 6), (cast.SALES_OTHER_STORE, 7)):
        headers = as_member(member)
        visit_id = open_visit(client, headers)
        response = _register(client, headers, visit_id, customer_body(seed=seed), key)
        assert response.status_code == 201, (member.login, response.text)
        assert _attached(db, visit_id) == response.json()["id"]
        ids.append(response.json()["id"])
    assert len(set(ids)) == 3
    assert _count(db, Customer) == 3


def test_a_refused_request_leaves_no_key_behind(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    closed = open_visit(client, sales)
    assert client.post(f"/visits/{closed}/close", headers=sales).status_code == 200
    body = customer_body(seed=8)
    refused = _register(client, sales, closed, body, "first-try-refused")
    assert refused.status_code == 403, refused.text
    assert _count(db, IdempotentRequest) == 0

    visit_id = open_visit(client, sales)
    accepted = _register(client, sales, visit_id, body, "first-try-refused")
    assert accepted.status_code == 201, accepted.text
    assert _count(db, Customer) == 1


def test_a_key_names_one_request_not_one_per_route(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    key = "reused-across-routes"
    opened = client.post(
        "/visits", json={"type": "new_contract"}, headers={**sales, "Idempotency-Key": key}
    )
    assert opened.status_code == 201, opened.text
    response = _register(client, sales, opened.json()["id"], customer_body(seed=9), key)
    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith("/problems/idempotency-mismatch")
    assert _count(db, Customer) == 0


# --- a retry that arrives while the first request is still running ----------------------------


def test_simultaneous_visits_with_one_key_make_one_visit(
    client: TestClient, as_member: AsMember, db: Engine, settings: Settings
) -> None:
    headers = {**as_member(cast.SALES), "Idempotency-Key": "burst-of-retries"}
    before = _count(db, Visit)
    calls: list[Call] = [("POST", "/visits", {"type": "inquiry"}, headers)] * 4
    responses = concurrently(settings, calls)
    assert {r.status_code for r in responses} <= {201, 409}, [r.text for r in responses]
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created) == 1
    assert _count(db, Visit) == before + 1
    retry = client.post("/visits", json={"type": "inquiry"}, headers=headers)
    assert retry.json()["id"] in created


def test_simultaneous_registrations_with_one_key_make_one_customer(
    client: TestClient, as_member: AsMember, db: Engine, settings: Settings
) -> None:
    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales)
    headers = {
        **purpose(sales, "contract", visit=visit_id),
        "Idempotency-Key": "burst-of-registrations",
    }
    calls: list[Call] = [("POST", "/customers", customer_body(seed=10), headers)] * 3
    responses = concurrently(settings, calls)
    assert {r.status_code for r in responses} <= {201, 409}, [r.text for r in responses]
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created) == 1
    assert _count(db, Customer) == 1
    assert _attached(db, visit_id) in created
    retry = client.post("/customers", json=customer_body(seed=10), headers=headers)
    assert retry.status_code == 201, retry.text
    assert retry.json()["id"] in created
