"""Proof of presence (SPEC: promise 3; Visits — proof of presence, locks, the PIN, how long a
visit justifies): a customer is attached to a visit only when they are there."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import AccessEvent, Customer, Visit
from tests import cast
from tests.access_log import event_of, events_of
from tests.conftest import SettingsFactory, login
from tests.test_presence_code import delivered_code, request_code
from tests.world import (
    KNOWN_PINS,
    customer_body,
    open_visit,
    purpose,
    reason_header,
    register_customer,
)

Headers = dict[str, str]
AsMember = Callable[..., Headers]
REASON = "本人確認書類を忘れたお客様の来店対応"
RIGHT_DOCUMENT: dict[str, str] = {}


def _attach(
    client: TestClient, headers: Headers, customer_id: str, presence: dict[str, Any] | None
) -> Any:
    body: dict[str, Any] = {"type": "inquiry", "customer_id": customer_id}
    if presence is not None:
        body["presence"] = presence
    return client.post("/visits", json=body, headers=headers)


def _pin(pin: str) -> dict[str, str]:
    return {"method": "pin", "pin": pin}


def _wrong_pin(customer_id: str) -> dict[str, str]:
    right = KNOWN_PINS.get(customer_id, "0000")
    return _pin("8642" if right != "8642" else "9753")


def _refused(response: Any, slug: str) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["type"] == f"/problems/{slug}"


@pytest.fixture
def customer(client: TestClient, as_member: AsMember) -> Any:
    registered = register_customer(client, as_member(cast.SALES), seed=901)
    RIGHT_DOCUMENT[registered.id] = registered.body["identity_document"]["number"]
    return registered


def test_the_seed_worry_a_clerk_never_reaches_a_customer_who_is_not_there(
    client: TestClient, as_member: AsMember, db: Engine, customer: Any
) -> None:
    sales = as_member(cast.SALES_OTHER_STORE)  # another store: an acquaintance looking them up
    found = client.post(
        "/customers/search",
        json={"phone": customer.body["phone"]},
        headers=purpose(sales, "contract"),
    )
    assert [m["id"] for m in found.json()["items"]] == [customer.id]

    no_proof = _attach(client, sales, customer.id, None)
    _refused(no_proof, "presence-required")
    assert event_of(db, no_proof).denial == "presence-required"
    for attempt in range(5):
        wrong = _attach(client, sales, customer.id, _wrong_pin(customer.id))
        _refused(wrong, "presence-not-proven")
        event = event_of(db, wrong)
        assert (event.action, event.outcome, event.presence_method) == ("attach", "denied", "pin")
        assert event.customer_ids == [customer.id], attempt
    locked = _attach(client, sales, customer.id, _pin(KNOWN_PINS[customer.id]))
    _refused(locked, "presence-locked")
    assert int(locked.headers["Retry-After"]) > 0
    for response in (no_proof, wrong, locked):
        assert customer.body["name"] not in response.text
        assert KNOWN_PINS[customer.id] not in response.text
    # No visit of theirs holds the customer: nothing can be read.
    with Session(db) as session:
        attached = session.scalars(select(Visit).where(Visit.customer_id == customer.id)).all()
    assert {v.store_id for v in attached} == {_store_id(db, "S001")}

    # The customer arrives with their licence: served at once, locked PIN or not.
    document = {"method": "identity_document", "number": RIGHT_DOCUMENT[customer.id]}
    served = _attach(client, sales, customer.id, document)
    assert served.status_code == 201, served.text
    event = event_of(db, served)
    assert (event.action, event.presence_method, event.review_required) == (
        "attach",
        "identity_document",
        False,
    )
    read = client.get(
        f"/customers/{customer.id}",
        headers=purpose(sales, "contract", visit=served.json()["id"]),
    )
    assert read.status_code == 200 and read.json()["name"] == customer.body["name"]
    # The document proof lifted the lock: the PIN works again.
    assert _attach(client, sales, customer.id, _pin(KNOWN_PINS[customer.id])).status_code == 201


def _store_id(db: Engine, code: str) -> str:
    from app.models import Store

    with Session(db) as session:
        return str(session.scalars(select(Store.id).where(Store.code == code)).one())


def test_a_wrong_proof_and_an_unknown_customer_get_the_same_answer_and_both_lock(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    unknown = str(uuid.uuid4())
    for _ in range(5):
        _refused(_attach(client, sales, unknown, _pin("8642")), "presence-not-proven")
    _refused(_attach(client, sales, unknown, _pin("8642")), "presence-locked")
    document = {"method": "identity_document", "number": "123456789012"}
    _refused(_attach(client, sales, unknown, document), "presence-not-proven")


def test_ten_failures_a_day_lock_until_a_document_proof(
    make_settings: SettingsFactory, db: Engine
) -> None:
    # Windows made small enough to pass within the test: 2 per 1 second, 4 per day.
    with TestClient(create_app_with(make_settings(presence_lock="2/1second;4/day"))) as client:
        sales = login(client, cast.SALES)
        registered = register_customer(client, sales, seed=902)
        cid = registered.id
        wrong = _wrong_pin(cid)
        for _ in range(2):
            _refused(_attach(client, sales, cid, wrong), "presence-not-proven")
        _refused(_attach(client, sales, cid, wrong), "presence-locked")
        _wait_past_a_second()
        for _ in range(2):
            _refused(_attach(client, sales, cid, wrong), "presence-not-proven")
        _wait_past_a_second()
        hard = _attach(client, sales, cid, _pin(KNOWN_PINS[cid]))
        _refused(hard, "presence-locked")  # the timed window has passed; the day's has not
        document = {
            "method": "identity_document",
            "number": registered.body["identity_document"]["number"],
        }
        assert _attach(client, sales, cid, document).status_code == 201
        assert _attach(client, sales, cid, _pin(KNOWN_PINS[cid])).status_code == 201


def _wait_past_a_second() -> None:
    import time

    time.sleep(1.1)  # the storage's own clock: the one wait in this file, bounded


def create_app_with(settings: Settings) -> Any:
    from app.main import create_app

    return create_app(settings)


def test_a_manager_may_attach_on_a_reason_queued_for_review(
    client: TestClient, as_member: AsMember, db: Engine, customer: Any
) -> None:
    manager = as_member(cast.MANAGER)
    with_reason = {**manager, "X-Access-Reason": reason_header(REASON)}
    response = _attach(client, with_reason, customer.id, None)
    assert response.status_code == 201, response.text
    event = event_of(db, response)
    assert (event.presence_method, event.review_required, event.reason) == (
        "manager_reason",
        True,
        REASON,
    )
    # Sales and technicians have no such way.
    for member in (cast.SALES, cast.TECHNICIAN):
        refused = _attach(
            client,
            {**as_member(member), "X-Access-Reason": reason_header(REASON)},
            customer.id,
            None,
        )
        _refused(refused, "presence-required")


def test_proof_by_sms_code_for_a_customer_on_the_phone(
    client: TestClient,
    as_member: AsMember,
    db: Engine,
    settings: Settings,
    tmp_path: Path,
    customer: Any,
) -> None:
    sales = as_member(cast.SALES)
    request_code(client, purpose(sales, "support"), customer.id)
    _, code = delivered_code(settings, tmp_path, datetime.now(UTC))
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    _refused(
        _attach(client, sales, customer.id, {"method": "sms_code", "code": wrong}),
        "presence-not-proven",
    )
    served = _attach(client, sales, customer.id, {"method": "sms_code", "code": code})
    assert served.status_code == 201, served.text
    assert event_of(db, served).presence_method == "sms_code"
    again = _attach(client, sales, customer.id, {"method": "sms_code", "code": code})
    _refused(again, "presence-not-proven")  # used once


@pytest.mark.parametrize(
    "presence",
    [
        {"method": "pin", "pin": "12345"},
        {"method": "pin", "pin": "12a4"},
        {"method": "password", "pin": "1234"},
        {"method": "pin", "pin": "4826", "extra": True},
        {"method": "identity_document", "number": "12-34"},
        {"method": "sms_code", "code": "12345"},
    ],
)
def test_malformed_proofs_are_422_and_attach_nothing(
    client: TestClient, as_member: AsMember, db: Engine, customer: Any, presence: dict[str, Any]
) -> None:
    response = _attach(client, as_member(cast.SALES), customer.id, presence)
    assert response.status_code == 422, response.text
    assert events_of(db, response) == []
    without_customer = client.post(
        "/visits", json={"type": "inquiry", "presence": _pin("4826")}, headers=as_member(cast.SALES)
    )
    assert without_customer.status_code == 422


def test_a_well_formed_number_of_another_document_is_a_wrong_proof(
    client: TestClient, as_member: AsMember, customer: Any
) -> None:
    passport = {"method": "identity_document", "number": "TK1234567"}
    _refused(_attach(client, as_member(cast.SALES), customer.id, passport), "presence-not-proven")


def test_a_customer_without_a_kept_number_proves_presence_by_pin_or_code(
    client: TestClient, as_member: AsMember
) -> None:
    sales = as_member(cast.SALES)
    registered = register_customer(
        client, sales, seed=903, identity_document={"type": "my_number_card"}
    )
    licence = {"method": "identity_document", "number": "123456789012"}
    _refused(_attach(client, sales, registered.id, licence), "presence-not-proven")
    assert _attach(client, sales, registered.id, _pin(KNOWN_PINS[registered.id])).status_code == 201


# --- the PIN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["repeated", "1234", "4321", "mmdd", "year", "phone"])
def test_weak_pins_are_refused_at_registration(
    client: TestClient, as_member: AsMember, db: Engine, kind: str
) -> None:
    sales = as_member(cast.SALES)
    body = customer_body(904, date_of_birth="1987-06-15", phone="090-3141-5926")
    body["pin"] = {
        "repeated": "7777",
        "1234": "1234",
        "4321": "4321",
        "mmdd": "0615",
        "year": "1987",
        "phone": "5926",
    }[kind]
    visit = open_visit(client, sales)
    response = client.post("/customers", json=body, headers=purpose(sales, "contract", visit=visit))
    assert response.status_code == 422, response.text
    assert body["pin"] not in response.text
    assert events_of(db, response) == []


def test_registration_needs_a_pin(client: TestClient, as_member: AsMember) -> None:
    sales = as_member(cast.SALES)
    body = customer_body(905)
    del body["pin"]
    visit = open_visit(client, sales)
    response = client.post("/customers", json=body, headers=purpose(sales, "contract", visit=visit))
    assert response.status_code == 422


def test_the_pin_is_kept_only_as_a_keyed_hash_and_never_leaves(
    client: TestClient,
    as_member: AsMember,
    db: Engine,
    caplog: pytest.LogCaptureFixture,
    customer: Any,
) -> None:
    pin = KNOWN_PINS[customer.id]
    assert pin not in str(customer.view)
    with Session(db) as session:
        row = session.get(Customer, customer.id)
        assert row is not None and row.pin_hash is not None and pin not in row.pin_hash
        assert len(row.pin_hash) == 64 and row.proof_salt
        events = session.scalars(select(AccessEvent)).all()
    # (Ids and hashes are hex: four digits occur in them by chance, so look at what is text.)
    texts = [
        " ".join([e.resource, e.reason or "", *e.fields, *(e.changed_fields or [])]) for e in events
    ]
    assert texts and not any(pin in text for text in texts)
    with caplog.at_level(logging.DEBUG):
        _attach(client, as_member(cast.SALES), customer.id, _pin(pin))
    assert pin not in caplog.text
    # The create event says the customer was present by definition.
    with Session(db) as session:
        created = session.scalars(
            select(AccessEvent).where(
                AccessEvent.action == "create", AccessEvent.resource == f"customers/{customer.id}"
            )
        ).one()
    assert created.presence_method == "registered"


def test_the_pin_is_changed_only_within_a_visit_with_proof_of_presence(
    client: TestClient, as_member: AsMember, db: Engine, customer: Any
) -> None:
    sales, manager = as_member(cast.SALES), as_member(cast.MANAGER)
    new_pin = "2580" if KNOWN_PINS[customer.id] != "2580" else "3691"
    refused = client.patch(
        f"/customers/{customer.id}",
        json={"pin": new_pin},
        headers=purpose(manager, "subject_request", reason=REASON),
    )
    _refused(refused, "presence-required")
    # A manager attaches a customer who forgot their PIN on a reason: then the PIN may change.
    visit = _attach(
        client, {**manager, "X-Access-Reason": reason_header(REASON)}, customer.id, None
    )
    visit_id = visit.json()["id"]
    weak = client.patch(
        f"/customers/{customer.id}",
        json={"pin": "1111"},
        headers=purpose(manager, "support", visit=visit_id),
    )
    assert weak.status_code == 422
    changed = client.patch(
        f"/customers/{customer.id}",
        json={"pin": new_pin},
        headers=purpose(manager, "support", visit=visit_id),
    )
    assert changed.status_code == 200, changed.text
    assert event_of(db, changed).changed_fields == ["pin"]
    assert new_pin not in changed.text
    _refused(
        _attach(client, sales, customer.id, _pin(KNOWN_PINS[customer.id])), "presence-not-proven"
    )
    assert _attach(client, sales, customer.id, _pin(new_pin)).status_code == 201
    KNOWN_PINS[customer.id] = new_pin


# --- how long a visit justifies ----------------------------------------------------------------


def test_a_clerk_cannot_read_a_repair_customer_through_the_technicians_visit_a_day_later(
    client: TestClient, as_member: AsMember, db: Engine, customer: Any
) -> None:
    technician, sales = as_member(cast.TECHNICIAN), as_member(cast.SALES)
    repair = open_visit(client, technician, "repair", customer.id)
    assert (
        client.get(
            f"/customers/{customer.id}", headers=purpose(sales, "support", visit=repair)
        ).status_code
        == 200
    )  # the customer just proved presence
    a_day_ago = datetime.now(UTC) - timedelta(days=1)
    with db.begin() as connection:
        connection.execute(update(Visit).where(Visit.id == repair).values(presence_at=a_day_ago))
    late = client.get(f"/customers/{customer.id}", headers=purpose(sales, "support", visit=repair))
    _refused(late, "visit-required")
    assert customer.body["name"] not in late.text
    # The technician's own repair view lasts as long as the repair.
    own = client.get(
        f"/customers/{customer.id}", headers=purpose(technician, "repair", visit=repair)
    )
    assert own.status_code == 200
    # The technician's identity check is not a repair view: it needs a recent proof too.
    identity = client.get(
        f"/customers/{customer.id}",
        headers=purpose(technician, "identity_verification", visit=repair),
    )
    _refused(identity, "visit-required")
    # Back for pick-up: the customer proves presence again, and the visit justifies again.
    again = client.post(
        f"/visits/{repair}/presence",
        json={"presence": _pin(KNOWN_PINS[customer.id])},
        headers=technician,
    )
    assert again.status_code == 200, again.text
    assert event_of(db, again).presence_method == "pin"
    assert (
        client.get(
            f"/customers/{customer.id}", headers=purpose(sales, "support", visit=repair)
        ).status_code
        == 200
    )


def test_proving_presence_again_needs_a_proof(
    client: TestClient, as_member: AsMember, customer: Any
) -> None:
    technician = as_member(cast.TECHNICIAN)
    repair = open_visit(client, technician, "repair", customer.id)
    refused = client.post(f"/visits/{repair}/presence", json={}, headers=technician)
    _refused(refused, "presence-required")
    wrong = client.post(
        f"/visits/{repair}/presence", json={"presence": _wrong_pin(customer.id)}, headers=technician
    )
    _refused(wrong, "presence-not-proven")
    empty = open_visit(client, technician, "repair")
    no_customer = client.post(
        f"/visits/{empty}/presence", json={"presence": _pin("4826")}, headers=technician
    )
    assert no_customer.status_code == 409


def test_locks_hold_across_processes_sharing_redis(
    make_settings: SettingsFactory, redis_settings: dict[str, str]
) -> None:
    """Two API processes (two apps, each its own runtime) behind one load balancer: failures
    counted by one lock the customer's PIN in the other."""
    settings = make_settings(**redis_settings)
    with (
        TestClient(create_app_with(settings)) as first,
        TestClient(create_app_with(settings)) as second,
    ):
        sales_first, sales_second = login(first, cast.SALES), login(second, cast.SALES)
        registered = register_customer(first, sales_first, seed=906)
        cid = registered.id
        for n in range(5):
            client, headers = (first, sales_first) if n % 2 else (second, sales_second)
            _refused(_attach(client, headers, cid, _wrong_pin(cid)), "presence-not-proven")
        _refused(_attach(first, sales_first, cid, _pin(KNOWN_PINS[cid])), "presence-locked")
        _refused(_attach(second, sales_second, cid, _pin(KNOWN_PINS[cid])), "presence-locked")
