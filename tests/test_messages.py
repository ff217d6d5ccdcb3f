"""Sending messages through the API: who may send what, on which justification, when, how often,
and that the caller never sees where a message goes (SPEC: Messages)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.config import Settings
from app.models import IdempotentRequest, Message
from tests import cast
from tests.access_log import count_rows, event_of
from tests.conftest import SettingsFactory, login_client
from tests.messaging import (
    BY_CATEGORY,
    TOKYO,
    VARIABLES,
    FakeClock,
    clock_at,
    message,
    messages,
    send,
    set_customer,
    set_visit_times,
    tokyo,
    with_purpose,
)
from tests.world import Registered, open_visit, register_customer

Headers = dict[str, str]
AsMember = Callable[..., Headers]

REASON = "店舗閉店に伴う重要なお知らせのため"


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(message_daily_cap=100)


@pytest.fixture
def daytime(client: TestClient) -> Iterator[FakeClock]:
    """The message rules run at 10:00 in Japan (within a day from now)."""
    with clock_at(client, tokyo(0, 10)) as clock:
        yield clock


@pytest.fixture
def customer(client: TestClient, as_member: AsMember) -> Registered:
    """Registered by sales at S001 in a new-contract visit; opted in to marketing by SMS only."""
    return register_customer(
        client,
        as_member(cast.SALES),
        seed=31,
        consents={"marketing_email": False, "marketing_sms": True},
    )


def repair_visit(client: TestClient, as_member: AsMember, customer: Registered) -> str:
    return open_visit(client, as_member(cast.TECHNICIAN), "repair", customer.id)


# --- the template catalog -----------------------------------------------------------------------


def test_templates_cover_every_category_on_both_channels(
    client: TestClient, as_member: AsMember
) -> None:
    assert client.get("/message-templates").status_code == 401
    response = client.get("/message-templates", headers=as_member(cast.TECHNICIAN))
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert {t["id"] for t in items} == set(VARIABLES)
    for category in BY_CATEGORY:
        for channel in ("email", "sms"):
            assert any(t["category"] == category and channel in t["channels"] for t in items)
    repair_ready = next(t for t in items if t["id"] == "repair_ready")
    assert repair_ready == {
        "id": "repair_ready",
        "title": "修理完了・お引き取りのご案内",
        "category": "support",
        "channels": ["email", "sms"],
        "variables": [
            {"name": "device_model", "type": "text", "max_length": 40},
            {"name": "store_name", "type": "text", "max_length": 30},
        ],
    }
    for template in items:
        assert {v["type"] for v in template["variables"]} <= {"text", "date", "time", "number"}


# --- a send, as recorded ------------------------------------------------------------------------


def test_technician_tells_a_customer_their_repair_is_ready(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    visit = repair_visit(client, as_member, customer)
    # The repair took ten days: the repair visit still justifies the technician's message.
    set_visit_times(db, visit, opened_at=datetime.now(UTC) - timedelta(days=10))
    headers = with_purpose(as_member(cast.TECHNICIAN), "repair", visit=visit)

    response = send(client, headers, customer.id, "repair_ready", "sms")

    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer == {"id": answer["id"], "status": "queued"}
    for secret in (customer.body["phone"], customer.body["email"], "090", "+81"):
        assert secret not in response.text
    stored = message(db, answer["id"])
    assert (stored.kind, stored.channel, stored.template, stored.category) == (
        "message",
        "sms",
        "repair_ready",
        "support",
    )
    assert stored.status == "queued" and not stored.urgent
    assert stored.consent_basis == "service_relationship"
    assert stored.visit_id == visit
    assert stored.body_enc is not None and b"Galaxy" not in stored.body_enc
    event = event_of(db, response)
    assert (event.action, event.outcome, event.purpose) == ("message", "allowed", "repair")
    assert event.fields == ["contact"]
    assert event.customer_ids == [customer.id]
    assert event.resource == f"messages/{answer['id']}"
    assert event.review_required is False


# --- role × category ----------------------------------------------------------------------------

# SPEC, Messages: who may send which category (a copy, so that a change to the code's table
# cannot pass unnoticed).
SPEC_SENDERS = {
    "sales": {"procedure_guidance", "support", "appointment"},
    "technician": {"support", "appointment"},
    "manager": set(BY_CATEGORY),
    "billing_system": {"procedure_guidance"},
    "fraud_system": set(),
    "auditor": set(),
    "admin": set(),
}


def test_role_by_category_table(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    repair = repair_visit(client, as_member, customer)
    contexts: dict[str, Headers] = {
        "sales": with_purpose(as_member(cast.SALES), "support", visit=customer.visit_id),
        "technician": with_purpose(as_member(cast.TECHNICIAN), "repair", visit=repair),
        "manager": with_purpose(as_member(cast.MANAGER), "support", reason=REASON),
        "billing_system": with_purpose(login_client(client, cast.BILLING), "billing"),
        "fraud_system": with_purpose(login_client(client, cast.FRAUD), "fraud_prevention"),
        "auditor": with_purpose(as_member(cast.AUDITOR), "audit", reason=REASON),
        "admin": with_purpose(as_member(cast.ADMIN), "support"),
    }
    for role, headers in contexts.items():
        for category, template in BY_CATEGORY.items():
            response = send(client, headers, customer.id, template, "sms")
            event = event_of(db, response)
            assert event.action == "message"
            if category in SPEC_SENDERS[role]:
                assert response.status_code == 202, (role, category, response.text)
                assert event.outcome == "allowed"
            else:
                assert response.status_code == 403, (role, category, response.text)
                assert response.json()["type"] in {
                    "/problems/message-category-not-allowed",
                    "/problems/purpose-not-allowed",
                }
                assert (event.outcome, event.denial) == (
                    "denied",
                    response.json()["type"].removeprefix("/problems/"),
                )
    sent = messages(db, customer.id)
    assert len(sent) == sum(len(categories) for categories in SPEC_SENDERS.values())


def test_a_purpose_the_role_has_no_row_for_is_refused(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    # Sales have no repair row; billing_system sends only under billing.
    sales = with_purpose(as_member(cast.SALES), "repair", visit=customer.visit_id)
    billing = with_purpose(login_client(client, cast.BILLING), "support")
    for headers in (sales, billing):
        response = send(client, headers, customer.id, "contract_guidance")
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "/problems/purpose-not-allowed"
        assert event_of(db, response).outcome == "denied"
    billing_ok = with_purpose(login_client(client, cast.BILLING), "billing")
    response = send(client, billing_ok, customer.id, "payment_reminder", "email")
    assert response.status_code == 202, response.text
    assert event_of(db, response).purpose == "billing"


# --- what justifies a send ----------------------------------------------------------------------


def test_sales_need_a_visit_of_this_customer_at_their_store_within_14_days(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    sales = as_member(cast.SALES)
    other = register_customer(client, sales, seed=32)
    now = datetime.now(UTC)

    def attempt(visit: str | None, customer_id: str = customer.id) -> int:
        headers = with_purpose(sales, "support", visit=visit)
        with clock_at(client, now):
            response = send(client, headers, customer_id, "appointment_change")
        if response.status_code == 403:
            assert response.json()["type"] == "/problems/visit-required", response.text
            assert event_of(db, response).denial == "visit-required"
        return response.status_code

    assert attempt(None) == 403
    assert attempt(customer.visit_id) == 202  # open
    assert attempt(other.visit_id) == 403  # another customer's visit
    other_store = register_customer(client, as_member(cast.SALES_OTHER_STORE), seed=33)
    assert attempt(other_store.visit_id, other_store.id) == 403  # not the caller's store
    # Closed 13 days ago: a follow-up still justified; 15 days ago: no longer.
    set_visit_times(db, customer.visit_id, closed_at=now - timedelta(days=13))
    assert attempt(customer.visit_id) == 202
    set_visit_times(db, customer.visit_id, closed_at=now - timedelta(days=15))
    assert attempt(customer.visit_id) == 403
    # The same refusal whether or not the customer exists.
    assert attempt(customer.visit_id, "7d1f0e5c-0000-4000-8000-000000000000") == 403


def test_a_repair_visit_justifies_others_only_near_the_last_proof_of_presence(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    visit = repair_visit(client, as_member, customer)
    now = datetime.now(UTC)
    sales = with_purpose(as_member(cast.SALES), "support", visit=visit)
    technician_other_purpose = with_purpose(
        as_member(cast.TECHNICIAN), "identity_verification", visit=visit
    )
    technician = with_purpose(as_member(cast.TECHNICIAN), "support", visit=visit)

    with clock_at(client, now):
        set_visit_times(db, visit, presence_at=now - timedelta(hours=3))  # within 4 hours
        assert send(client, sales, customer.id).status_code == 202
        assert send(client, technician_other_purpose, customer.id).status_code == 202
        set_visit_times(db, visit, presence_at=now - timedelta(hours=5))
        assert send(client, sales, customer.id).status_code == 403
        assert send(client, technician_other_purpose, customer.id).status_code == 403
        # The technician's own repair and support messages: as long as the repair lasts.
        assert send(client, technician, customer.id).status_code == 202


def test_technicians_need_a_repair_visit(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    technician = as_member(cast.TECHNICIAN)
    inquiry = open_visit(client, technician, "inquiry", customer.id)
    response = send(client, with_purpose(technician, "support", visit=inquiry), customer.id)
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/visit-required"
    response = send(client, with_purpose(technician, "support"), customer.id)
    assert response.status_code == 403
    assert event_of(db, response).denial == "visit-required"


def test_managers_send_with_a_visit_or_a_reason_and_the_reason_is_reviewed(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    manager = as_member(cast.MANAGER)
    response = send(client, with_purpose(manager, "support"), customer.id)
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/reason-required"

    response = send(client, with_purpose(manager, "support", reason=REASON), customer.id)
    assert response.status_code == 202, response.text
    assert event_of(db, response).review_required is True

    visit = open_visit(client, manager, "inquiry", customer.id)
    response = send(client, with_purpose(manager, "support", visit=visit), customer.id)
    assert response.status_code == 202, response.text
    assert event_of(db, response).review_required is False


def test_an_unknown_customer_is_404_only_once_justified(
    client: TestClient, as_member: AsMember, db: Engine, daytime: object
) -> None:
    manager = with_purpose(as_member(cast.MANAGER), "support", reason=REASON)
    response = send(client, manager, "7d1f0e5c-0000-4000-8000-000000000000")
    assert response.status_code == 404
    response = send(client, manager, "not-a-uuid")
    assert response.status_code == 404
    assert count_rows(db, Message) == 0


# --- suspension and consent ---------------------------------------------------------------------


def test_a_suspended_customer_gets_only_an_urgent_important_notice(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    set_customer(db, customer.id, state="suspended")
    manager = as_member(cast.MANAGER)
    visit = open_visit(client, manager, "inquiry", customer.id)
    refused = [
        (with_purpose(as_member(cast.SALES), "support", visit=customer.visit_id), "repair_ready"),
        (with_purpose(manager, "support", reason=REASON), "repair_ready"),
        # An important notice, but with a visit and no reason: not urgent.
        (with_purpose(manager, "support", visit=visit), "store_closure"),
    ]
    for headers, template in refused:
        response = send(client, headers, customer.id, template)
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "/problems/customer-suspended"
        assert event_of(db, response).denial == "customer-suspended"

    urgent = with_purpose(manager, "subject_request", reason=REASON)
    response = send(client, urgent, customer.id, "store_closure", "email")
    assert response.status_code == 202, response.text
    stored = message(db, response.json()["id"])
    assert stored.urgent is True
    assert (stored.consent_basis, stored.basis_reason) == ("urgent_reason", REASON)


def test_marketing_needs_the_opt_in_for_its_channel(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    manager = with_purpose(as_member(cast.MANAGER), "support", reason=REASON)
    response = send(client, manager, customer.id, "campaign", "email")  # no e-mail opt-in
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/consent-required"
    assert event_of(db, response).denial == "consent-required"

    response = send(client, manager, customer.id, "campaign", "sms")
    assert response.status_code == 202, response.text
    stored = message(db, response.json()["id"])
    assert stored.consent_basis == "opt_in"
    # The opt-in's own time, from the consent history (registration).
    assert stored.consent_given_at is not None
    assert stored.consent_given_at <= stored.created_at


def test_an_email_needs_an_address(
    client: TestClient, as_member: AsMember, db: Engine, daytime: object
) -> None:
    sales = as_member(cast.SALES)
    no_email = register_customer(client, sales, seed=34, email=None)
    headers = with_purpose(sales, "support", visit=no_email.visit_id)
    response = send(client, headers, no_email.id, "repair_ready", "email")
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "/problems/no-address"
    assert event_of(db, response).outcome == "denied"
    assert count_rows(db, Message) == 0


# --- quiet hours and the daily cap --------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [(7, 59, "scheduled"), (8, 0, "queued"), (20, 59, "queued"), (21, 0, "scheduled")],
)
def test_quiet_hours_schedule_for_eight(
    client: TestClient,
    as_member: AsMember,
    db: Engine,
    customer: Registered,
    hour: int,
    minute: int,
    expected: str,
) -> None:
    at = tokyo(0, hour, minute)
    headers = with_purpose(as_member(cast.SALES), "support", visit=customer.visit_id)
    with clock_at(client, at):
        response = send(client, headers, customer.id)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == expected
    stored = message(db, response.json()["id"])
    due = stored.due_at.astimezone(TOKYO)
    if expected == "queued":
        assert stored.due_at == at
    else:
        assert (due.hour, due.minute) == (8, 0)
        assert timedelta(0) < stored.due_at - at <= timedelta(hours=11)


def test_an_urgent_notice_goes_out_at_night(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    manager = as_member(cast.MANAGER)
    visit = open_visit(client, manager, "inquiry", customer.id)
    with clock_at(client, tokyo(0, 23, 30)):
        urgent = send(
            client, with_purpose(manager, "support", reason=REASON), customer.id, "service_outage"
        )
        not_urgent = send(
            client, with_purpose(manager, "support", visit=visit), customer.id, "service_outage"
        )
    assert urgent.json()["status"] == "queued", urgent.text
    assert not_urgent.json()["status"] == "scheduled", not_urgent.text


def test_the_daily_cap_counts_non_urgent_messages_per_customer(
    make_settings: SettingsFactory,
    db: Engine,
) -> None:
    # Its own app: the default cap of 3.
    from app.main import create_app
    from tests.conftest import login

    with TestClient(create_app(make_settings())) as capped:
        sales = login(capped, cast.SALES)
        manager = login(capped, cast.MANAGER)
        first = register_customer(capped, sales, seed=35)
        second = register_customer(capped, sales, seed=36)
        start = tokyo(0, 10)
        headers = with_purpose(sales, "support", visit=first.visit_id)
        with clock_at(capped, start) as clock:
            for minutes in (0, 10, 20):
                clock.now = start + timedelta(minutes=minutes)
                assert send(capped, headers, first.id).status_code == 202
            clock.now = start + timedelta(hours=1)
            refused = send(capped, headers, first.id)
            assert refused.status_code == 429, refused.text
            assert refused.json()["type"] == "/problems/rate-limited"
            # The first of the three leaves the window 23 hours later.
            assert int(refused.headers["Retry-After"]) == 23 * 3600 + 1
            event = event_of(db, refused)
            assert (event.action, event.outcome, event.denial) == (
                "message",
                "denied",
                "rate-limited",
            )
            # Urgent messages are exempt; another customer has a cap of their own.
            urgent = with_purpose(manager, "support", reason=REASON)
            assert send(capped, urgent, first.id, "store_closure").status_code == 202
            other = with_purpose(sales, "support", visit=second.visit_id)
            assert send(capped, other, second.id).status_code == 202
            # 24 hours after the first, there is room for one more.
            clock.now = start + timedelta(hours=24, seconds=1)
            assert send(capped, headers, first.id).status_code == 202
            assert send(capped, headers, first.id).status_code == 429
        assert len(messages(db, first.id)) == 5


# --- bad input ----------------------------------------------------------------------------------


def test_sms_bodies_are_limited_to_670_characters(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    headers = with_purpose(as_member(cast.SALES), "support", visit=customer.visit_id)
    long = dict(VARIABLES["inquiry_follow_up"], summary="ご依頼の件について。" * 65)
    response = send(client, headers, customer.id, "inquiry_follow_up", "sms", variables=long)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["type"] == "too_long"
    assert count_rows(db, Message) == 0
    response = send(client, headers, customer.id, "inquiry_follow_up", "email", variables=long)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"from": "+819000000000"}, ["body", "from"]),
        ({"template": "free_text"}, ["body", "template"]),
        ({"channel": "fax"}, ["body", "channel"]),
        ({"variables": {"store_name": "渋谷店"}}, ["body", "variables", "device_model"]),
        ({"variables": {**VARIABLES["repair_ready"], "extra_one": "x"}}, ["body", "variables"]),
        ({"variables": {**VARIABLES["repair_ready"], "store_name": "渋" * 31}}, None),
        (
            {"variables": {**VARIABLES["repair_ready"], "device_model": "https://evil.example"}},
            None,
        ),
        ({"variables": {**VARIABLES["repair_ready"], "device_model": "www.evil.example"}}, None),
        ({"variables": {**VARIABLES["repair_ready"], "device_model": "090-1234-5678へ"}}, None),
        ({"variables": {**VARIABLES["repair_ready"], "device_model": "a@example.jp"}}, None),
        ({"variables": {**VARIABLES["repair_ready"], "device_model": "改行\nあり"}}, None),
        ({"variables": {**VARIABLES["repair_ready"], "device_model": 24}}, None),
    ],
)
def test_bad_input_is_refused_without_an_outbox_row(
    client: TestClient,
    as_member: AsMember,
    db: Engine,
    customer: Registered,
    daytime: object,
    body: dict[str, object],
    where: list[str] | None,
) -> None:
    headers = with_purpose(as_member(cast.SALES), "support", visit=customer.visit_id)
    payload = {
        "channel": "sms",
        "template": "repair_ready",
        "variables": VARIABLES["repair_ready"],
        **body,
    }
    response = send(client, headers, customer.id, body=payload)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors = response.json()["errors"]
    if where is not None:
        assert any(error["loc"] == where for error in errors), errors
    assert "evil" not in response.text and "1234-5678" not in response.text
    assert count_rows(db, Message) == 0


def test_idempotency_key_is_required_and_replays_the_first_answer(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered, daytime: object
) -> None:
    headers = with_purpose(as_member(cast.SALES), "support", visit=customer.visit_id)
    path = f"/customers/{customer.id}/messages"
    body = {"channel": "sms", "template": "repair_ready", "variables": VARIABLES["repair_ready"]}

    missing = client.post(path, json=body, headers=headers)
    assert missing.status_code == 400
    assert missing.json()["type"] == "/problems/idempotency-key-required"
    too_long = client.post(path, json=body, headers={**headers, "Idempotency-Key": "k" * 201})
    assert too_long.status_code == 400
    # The key is checked before the body is parsed.
    malformed = client.post(path, content=b"{", headers={**headers, "Content-Type": "x/json"})
    assert malformed.status_code == 400

    first = send(client, headers, customer.id, key="pos-retry-0001")
    again = send(client, headers, customer.id, key="pos-retry-0001")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert len(messages(db, customer.id)) == 1
    assert count_rows(db, IdempotentRequest) >= 1
    assert event_of(db, first).action == "message"

    other = send(client, headers, customer.id, "appointment_change", key="pos-retry-0001")
    assert other.status_code == 409
    assert other.json()["type"] == "/problems/idempotency-mismatch"
    assert len(messages(db, customer.id)) == 1


# --- history and status -------------------------------------------------------------------------


def test_history_and_status_follow_the_read_rules_and_never_show_the_address(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    sales = as_member(cast.SALES)
    headers = with_purpose(sales, "support", visit=customer.visit_id)
    sent = [
        send(client, headers, customer.id, t).json()["id"]
        for t in BY_CATEGORY.values()
        if t in {"repair_ready", "appointment_change", "contract_guidance"}
    ]

    listing = client.get(f"/customers/{customer.id}/messages", headers=headers)
    assert listing.status_code == 200, listing.text
    assert listing.headers["cache-control"] == "no-store"
    items = listing.json()["items"]
    assert [item["id"] for item in items] == list(reversed(sent))  # newest first
    assert {item["status"] for item in items} <= {"queued", "scheduled"}
    for secret in (customer.body["phone"], customer.body["email"], "+81"):
        assert secret not in listing.text
    event = event_of(db, listing)
    assert (event.action, event.customer_ids, event.fields) == ("read", [customer.id], [])

    page = client.get(f"/customers/{customer.id}/messages?limit=2", headers=headers).json()
    assert len(page["items"]) == 2 and page["next"]
    rest = client.get(
        f"/customers/{customer.id}/messages?limit=2&cursor={page['next']}", headers=headers
    ).json()
    assert [i["id"] for i in page["items"] + rest["items"]] == list(reversed(sent))

    one = client.get(f"/messages/{sent[0]}", headers=headers)
    assert one.status_code == 200, one.text
    assert one.json()["template"] in VARIABLES and one.json()["channel"] == "sms"
    assert "body" not in one.json() and "to" not in one.json()

    # The read rules: no visit → 403 (recorded); another store → 403; unknown → 404 only when
    # the context would allow the record.
    for path in (f"/customers/{customer.id}/messages", f"/messages/{sent[0]}"):
        refused = client.get(path, headers=with_purpose(sales, "support"))
        assert refused.status_code == 403
        assert event_of(db, refused).outcome == "denied"
    manager = with_purpose(as_member(cast.MANAGER), "support", reason=REASON)
    unknown = "7d1f0e5c-0000-4000-8000-000000000000"
    assert client.get(f"/messages/{unknown}", headers=manager).status_code == 404
    assert (
        client.get(f"/messages/{unknown}", headers=with_purpose(sales, "support")).status_code
        == 403
    )


def test_check_order_before_the_body(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    path = f"/customers/{customer.id}/messages"
    assert client.post(path, content=b"{").status_code == 401
    sales = as_member(cast.SALES)
    response = client.post(path, content=b"{", headers={**sales, "Idempotency-Key": "k-00000001"})
    assert response.status_code == 400
    assert response.json()["type"] == "/problems/purpose-required"
    bad_reason = {**sales, "X-Access-Purpose": "support", "X-Access-Reason": "%ZZ"}
    assert client.post(path, content=b"{", headers=bad_reason).status_code == 400
