"""The access-rule gaps a review found (each of these failed before the access pipeline):
contract answers beyond the policy, a refusal hidden by a bad body, a contract looked up before
the policy, visit free text without a purpose or an event, and raw path values in the log."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.models import AccessEvent
from tests import cast
from tests.access_log import event_of, events_of
from tests.conftest import login, login_client
from tests.world import add_contract, open_visit, presence_of, purpose, register_customer

Headers = dict[str, str]
AsMember = Callable[..., Headers]
REASON = "お客様からの契約内容の問い合わせ対応"
CONTRACT = {
    "line_number": "080-1111-2222",
    "plan": "5G ギガプラン",
    "device": {"model": "Pixel 9", "imei": "353456789012345"},
    "billing": {"payment_method": "credit_card", "account_last4": "4242"},
}


def _denied(db: Engine, response: object) -> AccessEvent:
    event = event_of(db, response)  # type: ignore[arg-type]
    assert event.outcome == "denied"
    return event.row


# --- 1. contract answers carry only the caller's groups ------------------------------------------


@pytest.mark.parametrize("who", ["sales", "manager"])
def test_contract_answers_carry_only_the_callers_groups(
    client: TestClient, as_member: AsMember, db: Engine, who: str
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=21)
    caller = sales if who == "sales" else as_member(cast.MANAGER)
    headers = purpose(caller, "contract", visit=customer.visit_id)
    opened = client.post(f"/customers/{customer.id}/contracts", json=CONTRACT, headers=headers)
    assert opened.status_code == 201, opened.text
    # The contract row of sales and managers gives contracts and device, not billing.
    assert "billing" not in opened.json() and "4242" not in opened.text
    assert opened.json()["fields"] == ["contracts", "device"]
    assert opened.json()["device"]["imei_last4"] == "2345"
    assert event_of(db, opened).fields == ["contracts", "device"]

    ended = client.patch(
        f"/contracts/{opened.json()['id']}", json={"status": "terminated"}, headers=headers
    )
    assert ended.status_code == 200, ended.text
    assert "billing" not in ended.json() and "4242" not in ended.text
    assert event_of(db, ended).fields == ["contracts", "device"]


# --- 2. the check order runs before the body --------------------------------------------------


@pytest.mark.parametrize("body", ["{not json", '{"name": 12}'], ids=["malformed", "wrong-types"])
def test_a_refused_role_is_403_and_recorded_whatever_the_body(
    client: TestClient, as_member: AsMember, db: Engine, body: str
) -> None:
    technician = as_member(cast.TECHNICIAN)  # no row for `contract`
    response = client.post(
        "/customers",
        content=body,
        headers={**purpose(technician, "contract"), "Content-Type": "application/json"},
    )
    assert response.status_code == 403, response.text
    assert response.json()["type"] == "/problems/purpose-not-allowed"
    event = _denied(db, response)
    assert (event.action, event.resource, event.denial) == (
        "create",
        "customers",
        "purpose-not-allowed",
    )


def test_a_missing_purpose_is_400_even_when_the_json_is_malformed(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    response = client.post(
        "/customers/search",
        content="{not json",
        headers={**as_member(cast.SALES), "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "/problems/purpose-required"
    assert events_of(db, response) == []


def test_a_malformed_body_without_a_token_is_401(client: TestClient) -> None:
    response = client.post(
        "/customers",
        content="{not json",
        headers={"X-Access-Purpose": "contract", "Content-Type": "application/json"},
    )
    assert response.status_code == 401


def test_a_visit_bound_caller_without_a_visit_is_403_whatever_the_body(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    customer_id = str(uuid.uuid4())
    response = client.patch(
        f"/customers/{customer_id}",
        content="[1, 2",
        headers={**purpose(as_member(cast.SALES), "support"), "Content-Type": "application/json"},
    )
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/visit-required"
    event = _denied(db, response)
    assert event.resource == f"customers/{customer_id}"


def test_an_admitted_caller_with_a_malformed_body_gets_422_and_no_event(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    response = client.post(
        "/customers/search",
        content="{not json",
        headers={**purpose(sales, "contract"), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert events_of(db, response) == []


def test_a_role_refused_a_store_route_is_403_whatever_the_body(
    client: TestClient, db: Engine
) -> None:
    headers = login_client(client, cast.BILLING)
    response = client.post(
        "/visits", content="{bad", headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 403
    assert _denied(db, response).resource == "visits"


# --- 3. a contract is looked up only after the policy -------------------------------------------


def test_terminating_a_contract_checks_the_policy_first(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=22)
    contract = add_contract(client, sales, customer.id, customer.visit_id)
    unknown = str(uuid.uuid4())
    body = {"status": "terminated"}
    billing = login_client(client, cast.BILLING)
    for contract_id in (contract["id"], unknown):
        refused = client.patch(
            f"/contracts/{contract_id}", json=body, headers=purpose(billing, "contract")
        )
        # The same answer for an existing and an unknown contract; no customer named.
        assert refused.status_code == 403
        assert refused.json()["type"] == "/problems/purpose-not-allowed"
        event = _denied(db, refused)
        assert event.resource == f"contracts/{contract_id}"
        assert event_of(db, refused).customer_ids == []
    other_visit = open_visit(client, sales)
    for contract_id in (contract["id"], unknown):
        refused = client.patch(
            f"/contracts/{contract_id}",
            json=body,
            headers=purpose(sales, "contract", visit=other_visit),
        )
        assert refused.status_code == 403
        assert refused.json()["type"] == "/problems/visit-required"
    manager = purpose(as_member(cast.MANAGER), "contract", reason=REASON)
    missing = client.patch(f"/contracts/{unknown}", json=body, headers=manager)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "No such contract."
    malformed = client.patch("/contracts/0801234567", json=body, headers=manager)
    assert malformed.status_code == 404 and "0801234567" not in malformed.text


# --- 4. visit free text: only under a purpose that gives `repairs`, recorded ---------------------


def _repair_visit_for(client: TestClient, as_member: AsMember) -> tuple[str, str]:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=23)
    visit = open_visit(client, as_member(cast.TECHNICIAN), "repair", customer_id=customer.id)
    return visit, customer.id


def test_visit_texts_are_left_out_without_a_purpose_and_nothing_is_recorded(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    visit, _ = _repair_visit_for(client, as_member)
    for member in (cast.SALES, cast.TECHNICIAN, cast.MANAGER):
        response = client.get(f"/visits/{visit}", headers=as_member(member))
        assert response.status_code == 200
        assert "symptom" not in response.json()["repair"] and "notes" not in response.json()
        assert "画面" not in response.text
        assert events_of(db, response) == []
        listed = client.get("/visits", headers=as_member(member))
        assert "画面" not in listed.text and events_of(db, listed) == []


def test_a_technician_reads_the_symptom_of_an_open_repair_visit_as_a_recorded_read(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    visit, customer_id = _repair_visit_for(client, as_member)
    headers = purpose(as_member(cast.TECHNICIAN), "repair")
    response = client.get(f"/visits/{visit}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["repair"]["symptom"] == "画面が割れて表示されない"
    event = event_of(db, response)
    assert (event.action, event.purpose, event.outcome) == ("read", "repair", "allowed")
    assert event.customer_ids == [customer_id] and event.fields == ["repairs"]
    listed = client.get("/visits", headers=headers)
    item = next(i for i in listed.json()["items"] if i["id"] == visit)
    assert item["repair"]["symptom"] == "画面が割れて表示されない"
    assert event_of(db, listed).customer_ids == [customer_id]


def test_sales_never_read_visit_texts(client: TestClient, as_member: AsMember, db: Engine) -> None:
    visit, _ = _repair_visit_for(client, as_member)
    for purpose_name in ("contract", "support", "billing", "identity_verification"):
        headers = purpose(as_member(cast.SALES), purpose_name)
        response = client.get(f"/visits/{visit}", headers=headers)
        assert response.status_code == 403
        assert response.json()["type"] == "/problems/purpose-not-allowed"
        assert _denied(db, response).resource == f"visits/{visit}"
        listed = client.get("/visits", headers=headers)
        assert listed.status_code == 403 and "画面" not in listed.text


def test_a_technician_may_not_read_texts_of_a_visit_that_does_not_justify_it(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=24)
    headers = purpose(as_member(cast.TECHNICIAN), "repair")
    inquiry = client.post(
        "/visits",
        json={
            "type": "inquiry",
            "notes": "解約の相談",
            "customer_id": customer.id,
            "presence": presence_of(customer.id),
        },
        headers=sales,
    ).json()["id"]
    walk_in = open_visit(client, as_member(cast.TECHNICIAN), "repair")  # no customer yet
    for visit in (inquiry, walk_in):
        response = client.get(f"/visits/{visit}", headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "/problems/visit-required"
        assert "解約" not in response.text and "画面" not in response.text
    listed = client.get("/visits", headers=headers)
    assert "解約" not in listed.text and "画面" not in listed.text


def test_a_manager_reads_visit_texts_with_a_reason_queued_for_review(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    visit, customer_id = _repair_visit_for(client, as_member)
    close = client.post(f"/visits/{visit}/close", headers=as_member(cast.TECHNICIAN))
    assert close.status_code == 200
    manager = as_member(cast.MANAGER)
    refused = client.get(f"/visits/{visit}", headers=purpose(manager, "repair"))
    assert refused.status_code == 403  # closed, and no reason
    response = client.get(f"/visits/{visit}", headers=purpose(manager, "repair", reason=REASON))
    assert response.status_code == 200
    assert response.json()["repair"]["symptom"] == "画面が割れて表示されない"
    event = event_of(db, response)
    assert event.review_required is True and event.customer_ids == [customer_id]


# --- 6. no raw path value in the log -------------------------------------------------------------


def test_a_refused_visit_read_logs_the_canonical_id_or_the_malformed_marker(
    client: TestClient, db: Engine
) -> None:
    headers = login_client(client, cast.FRAUD)
    raw = "090-1234-5678" + "x" * 300
    refused = client.get(f"/visits/{raw}", headers=headers)
    assert refused.status_code == 403
    assert _denied(db, refused).resource == "visits/(malformed-id)"
    upper = str(uuid.uuid4()).upper()
    refused = client.get(f"/visits/{upper}", headers=headers)
    assert _denied(db, refused).resource == f"visits/{upper.lower()}"
    with Session(db) as session:
        resources = session.scalars(select(AccessEvent.resource)).all()
    assert not any("090-1234" in r for r in resources)


def test_a_staff_member_of_another_store_is_refused_without_a_trace_of_the_path(
    client: TestClient, db: Engine
) -> None:
    auditor = login(client, cast.AUDITOR)
    refused = client.patch("/visits/" + "9" * 250, json={"notes": "x"}, headers=auditor)
    assert refused.status_code == 403
    assert _denied(db, refused).resource == "visits/(malformed-id)"
