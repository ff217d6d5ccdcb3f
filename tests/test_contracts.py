"""Contracts: opened and terminated under purpose ``contract``; line numbers and IMEIs are
personal data, shown in national format and as the last 4 digits."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.models import Contract
from tests import cast
from tests.access_log import count_rows, event_of
from tests.conftest import login_client
from tests.world import add_contract, open_visit, purpose, register_customer

Headers = dict[str, str]
REASON = "契約内容の確認依頼に対応するため"


def contract_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "line_number": "+81 80 1234 9876",
        "plan": "5G ギガプラン",
        "device": {"model": "iPhone 16", "imei": "353456789012345"},
        "billing": {"payment_method": "bank_transfer", "account_last4": "0042"},
    }
    body.update(overrides)
    return body


def test_open_a_contract_and_see_it_on_the_customer(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=1)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    response = client.post(
        f"/customers/{customer.id}/contracts", json=contract_body(), headers=headers
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    contract = response.json()
    assert contract["line_number"] == "080-1234-9876"
    assert contract["status"] == "active" and contract["ended_on"] is None
    assert contract["device"] == {
        "contract_id": contract["id"],
        "model": "iPhone 16",
        "imei_last4": "2345",
    }
    assert "353456789012345" not in response.text
    assert "3456789012" not in response.text
    event = event_of(db, response)
    assert (event.action, event.outcome, event.customer_ids) == ("create", "allowed", [customer.id])
    assert event.resource == f"contracts/{contract['id']}"
    with Session(db) as session:
        row = session.get(Contract, contract["id"])
        assert row is not None
        assert b"353456789012345" not in row.imei_enc
        assert b"8012349876" not in row.line_number_enc

    view = client.get(f"/customers/{customer.id}", headers=headers).json()
    assert view["contracts"] == [
        {
            "id": contract["id"],
            "line_number": "080-1234-9876",
            "plan": "5G ギガプラン",
            "status": "active",
            "started_on": contract["started_on"],
            "ended_on": None,
        }
    ]
    assert view["devices"] == [contract["device"]]
    assert "billing" not in view  # sales/contract does not disclose billing
    billing_view = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "billing", visit=customer.visit_id)
    ).json()
    assert billing_view["billing"] == {"payment_method": "bank_transfer", "account_last4": "0042"}
    machine = client.get(
        f"/customers/{customer.id}",
        headers=purpose(login_client(client, cast.BILLING), "billing"),
    ).json()
    assert machine["billing"] == billing_view["billing"]
    assert [c["id"] for c in machine["contracts"]] == [contract["id"]]


def test_terminate_a_contract_once(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=2)
    contract = add_contract(client, sales, customer.id, customer.visit_id)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    response = client.patch(
        f"/contracts/{contract['id']}",
        json={"status": "terminated", "ended_on": contract["started_on"]},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "terminated"
    assert response.json()["ended_on"] == contract["started_on"]
    event = event_of(db, response)
    assert (event.action, event.outcome, event.customer_ids) == ("update", "allowed", [customer.id])
    assert event.changed_fields == ["ended_on", "status"]

    again = client.patch(
        f"/contracts/{contract['id']}", json={"status": "terminated"}, headers=headers
    )
    assert again.status_code == 409
    view = client.get(f"/customers/{customer.id}", headers=headers).json()
    assert view["contracts"][0]["status"] == "terminated"
    assert view["contracts"][0]["ended_on"] == contract["started_on"]


def test_termination_defaults_to_today(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    manager = as_member(cast.MANAGER)
    customer = register_customer(client, manager, seed=3)
    contract = add_contract(client, manager, customer.id, customer.visit_id)
    response = client.patch(
        f"/contracts/{contract['id']}",
        json={"status": "terminated"},
        headers=purpose(manager, "contract", reason=REASON),
    )
    assert response.status_code == 200, response.text
    assert response.json()["ended_on"] is not None
    assert response.json()["ended_on"] >= contract["started_on"]


def test_who_may_open_and_terminate_contracts(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales, tech = as_member(cast.SALES), as_member(cast.TECHNICIAN)
    customer = register_customer(client, sales, seed=4)
    contract = add_contract(client, sales, customer.id, customer.visit_id)
    repair = open_visit(client, tech, "repair", customer_id=customer.id)
    before = count_rows(db, Contract)
    refused = [
        purpose(tech, "contract", visit=repair),
        purpose(tech, "repair", visit=repair),
        purpose(login_client(client, cast.BILLING), "billing"),
        purpose(sales, "billing", visit=customer.visit_id),
        purpose(sales, "support", visit=customer.visit_id),
        purpose(login_client(client, cast.FRAUD), "fraud_prevention"),
    ]
    for headers in refused:
        opened = client.post(
            f"/customers/{customer.id}/contracts", json=contract_body(), headers=headers
        )
        ended = client.patch(
            f"/contracts/{contract['id']}", json={"status": "terminated"}, headers=headers
        )
        for response in (opened, ended):
            assert response.status_code == 403, (headers["X-Access-Purpose"], response.text)
            assert response.json()["type"] == "/problems/purpose-not-allowed"
            event = event_of(db, response)
            assert event.outcome == "denied"
    # Sales without a visit for this customer: refused at step 4.
    response = client.patch(
        f"/contracts/{contract['id']}",
        json={"status": "terminated"},
        headers=purpose(sales, "contract"),
    )
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/visit-required"
    assert count_rows(db, Contract) == before
    with Session(db) as session:
        assert session.scalar(select(Contract.status).where(Contract.id == contract["id"])) == (
            "active"
        )


def test_unknown_contract_is_404_only_for_a_caller_who_may_look(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales, manager = as_member(cast.SALES), as_member(cast.MANAGER)
    customer = register_customer(client, sales, seed=5)
    contract = add_contract(client, sales, customer.id, customer.visit_id)
    other = register_customer(client, sales, seed=6)
    unknown = str(uuid.uuid4())
    body = {"status": "terminated"}

    with_visit = purpose(sales, "contract", visit=other.visit_id)
    answers = []
    for asked in (contract["id"], unknown, "not-a-contract"):
        response = client.patch(f"/contracts/{asked}", json=body, headers=with_visit)
        assert response.status_code == 403, response.text
        answers.append(response.json()["type"] + response.json()["detail"])
        assert event_of(db, response).outcome == "denied"
    assert answers[0] == answers[1] == answers[2]

    with_reason = purpose(manager, "contract", reason=REASON)
    for asked in (unknown, "not-a-contract"):
        response = client.patch(f"/contracts/{asked}", json=body, headers=with_reason)
        assert response.status_code == 404, response.text
    response = client.post(
        f"/customers/{unknown}/contracts", json=contract_body(), headers=with_reason
    )
    assert response.status_code == 404


CONTRACT_BAD_INPUT: list[tuple[str, dict[str, Any], str | None]] = [
    ("unknown field", contract_body(discount="社員割引"), "社員割引"),
    (
        "unknown device field",
        contract_body(device={"model": "X", "imei": "353456789012345", "colour": "黒"}),
        "黒",
    ),
    (
        "IMEI of 14 digits",
        contract_body(device={"model": "X", "imei": "35345678901234"}),
        "35345678901234",
    ),
    (
        "IMEI with letters",
        contract_body(device={"model": "X", "imei": "35345678901234A"}),
        "35345678901234A",
    ),
    ("bad line number", contract_body(line_number="080-1234"), "080-1234"),
    ("unknown payment method", contract_body(billing={"payment_method": "cash"}), None),
    (
        "account_last4 too long",
        contract_body(billing={"payment_method": "credit_card", "account_last4": "42424"}),
        "42424",
    ),
    ("plan too long", contract_body(plan="プ" * 101), "ププププ"),
    ("no device", {k: v for k, v in contract_body().items() if k != "device"}, None),
]


def test_bad_contract_input_is_422(
    client: TestClient, as_member: Callable[..., Headers], db: Engine, subtests: pytest.Subtests
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=7)
    contract = add_contract(client, sales, customer.id, customer.visit_id)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    before = count_rows(db, Contract)
    for label, body, echo in CONTRACT_BAD_INPUT:
        with subtests.test(msg=label):
            response = client.post(
                f"/customers/{customer.id}/contracts", json=body, headers=headers
            )
            assert response.status_code == 422, response.text
            if echo is not None:
                assert echo not in response.text
    for label, patch in (
        ("unknown field", {"status": "terminated", "reason": "引っ越し"}),
        ("status other than terminated", {"status": "active"}),
        ("invalid date", {"status": "terminated", "ended_on": "2024-02-30"}),
    ):
        with subtests.test(msg=f"terminate: {label}"):
            response = client.patch(f"/contracts/{contract['id']}", json=patch, headers=headers)
            assert response.status_code == 422, response.text
            assert "引っ越し" not in response.text
    assert count_rows(db, Contract) == before
