"""The paper-form register: forms registered at a visit by the store's staff (an access event
naming the customer), read by the store's manager or an auditor, disposed of once by the store's
manager (early only with a reason), printable for the cabinet — and never a customer's personal
data beyond their id."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.documents.printable import prefers_html
from app.models import AccessEvent, PaperForm
from app.retention.service import today_in_japan
from tests import cast
from tests.access_log import count_rows, event_of, events_of
from tests.conftest import login, login_client
from tests.test_visits import concurrently
from tests.world import Registered, open_visit, register_customer

Headers = dict[str, str]
AsMember = Callable[..., Headers]
PROBLEM = "application/problem+json"
FORM_KEYS = {
    "id",
    "store",
    "visit_id",
    "customer_id",
    "form_type",
    "storage_location",
    "status",
    "registered_at",
    "registered_by",
    "retain_until",
    "retention_rule",
    "disposed_at",
    "disposed_by",
    "disposal_method",
}
EARLY = "原本をお客様に返却したため早期に廃棄します"
# 12 digits with a valid Individual Number check digit (see tests/test_visits.py).
INDIVIDUAL_NUMBER = "123456789018"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def _is_problem(response: Any, status: int, slug: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    if slug is not None:
        assert response.json()["type"] == f"/problems/{slug}"


def _customer(client: TestClient, as_member: AsMember, seed: int) -> Registered:
    """A customer registered at S001 by sales, in a visit that stays open with them attached."""
    return register_customer(client, as_member(cast.SALES), seed=seed)


def _register(
    client: TestClient,
    headers: Headers,
    visit_id: str,
    form_type: str = "identity_copy",
    location: str = "cabinet-2",
) -> Any:
    return client.post(
        f"/visits/{visit_id}/documents",
        json={"form_type": form_type, "storage_location": location},
        headers=headers,
    )


def _form(client: TestClient, headers: Headers, visit_id: str, **kwargs: Any) -> dict[str, Any]:
    response = _register(client, headers, visit_id, **kwargs)
    assert response.status_code == 201, response.text
    form: dict[str, Any] = response.json()
    return form


def _row(db: Engine, form_id: str) -> PaperForm:
    with Session(db) as session:
        row = session.get(PaperForm, form_id)
        assert row is not None
        session.expunge(row)
        return row


def _set(db: Engine, form_id: str, **values: Any) -> None:
    with db.begin() as connection:
        connection.execute(update(PaperForm).where(PaperForm.id == form_id).values(**values))


def _make_due(db: Engine, form_id: str) -> None:
    _set(db, form_id, retain_until=date(2020, 1, 31))


def _dispose(client: TestClient, headers: Headers, form_id: str, **body: Any) -> Any:
    return client.post(f"/documents/{form_id}/dispose", json=body, headers=headers)


def _dispose_events(db: Engine) -> list[AccessEvent]:
    with Session(db) as session:
        return list(session.scalars(select(AccessEvent).where(AccessEvent.action == "dispose")))


def _personal_values(customer: Registered) -> list[str]:
    body = customer.body
    return [body["name"], body["name_kana"], body["phone"], body["address"], body["email"]]


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# --- registering a form -------------------------------------------------------------------------


@pytest.mark.parametrize("member", [cast.SALES, cast.TECHNICIAN, cast.MANAGER], ids=str)
def test_store_staff_register_a_form_of_the_visits_customer(
    client: TestClient, as_member: AsMember, db: Engine, member: cast.Member
) -> None:
    customer = _customer(client, as_member, seed=31)
    # No X-Access-Purpose: forms are the shop's own records.
    response = _register(client, as_member(member), customer.visit_id, location=" cabinet-2 ")
    assert response.status_code == 201, response.text
    form = response.json()
    assert set(form) == FORM_KEYS
    uuid.UUID(form["id"])
    assert form["customer_id"] == customer.id
    assert form["visit_id"] == customer.visit_id
    assert form["store"] == "S001"
    assert form["form_type"] == "identity_copy"
    assert form["storage_location"] == "cabinet-2"
    assert form["status"] == "kept"
    assert form["registered_by"] == member.login
    assert form["retention_rule"] == "form.identity_copy"
    assert form["disposed_at"] is None and form["disposal_method"] is None
    assert datetime.fromisoformat(form["registered_at"]).tzinfo is not None
    for value in _personal_values(customer):
        assert value not in response.text

    event = event_of(db, response)
    assert (event.action, event.outcome, event.resource) == (
        "create",
        "allowed",
        f"documents/{form['id']}",
    )
    assert event.customer_ids == [customer.id]
    assert event.purpose is None and event.reason is None
    assert event.actor == member.login

    stored = _row(db, form["id"])
    assert (stored.customer_id, stored.form_type, stored.storage_location) == (
        customer.id,
        "identity_copy",
        "cabinet-2",
    )


def test_a_form_may_be_registered_after_its_visit_closed(
    client: TestClient, as_member: AsMember
) -> None:
    sales = as_member(cast.SALES)
    customer = _customer(client, as_member, seed=32)
    assert client.post(f"/visits/{customer.visit_id}/close", headers=sales).status_code == 200
    assert _register(client, sales, customer.visit_id).status_code == 201


def test_a_visit_without_a_customer_is_409_and_registers_nothing(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales, "inquiry")
    before = count_rows(db, AccessEvent)
    _is_problem(_register(client, sales, visit_id), 409, "conflict")
    assert count_rows(db, PaperForm) == 0
    assert count_rows(db, AccessEvent) == before


@pytest.mark.parametrize(
    "visit", ["other-store", "unknown", "malformed"], ids=["other-store", "unknown", "malformed"]
)
def test_a_visit_of_another_store_reads_as_not_found(
    client: TestClient, as_member: AsMember, db: Engine, visit: str
) -> None:
    customer = _customer(client, as_member, seed=33)
    visit_id = {
        "other-store": customer.visit_id,
        "unknown": str(uuid.uuid4()),
        "malformed": "090-1234-5678",
    }[visit]
    response = _register(client, as_member(cast.SALES_OTHER_STORE), visit_id)
    _is_problem(response, 404, "not-found")
    assert "090-1234-5678" not in response.text
    assert count_rows(db, PaperForm) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"form_type": "passport_copy", "storage_location": "cabinet-2"},
        {"form_type": "identity_copy", "storage_location": "x" * 65},
        {"form_type": "identity_copy", "storage_location": ""},
        {"form_type": "identity_copy", "storage_location": "   "},
        {"form_type": "identity_copy", "storage_location": f"棚 {INDIVIDUAL_NUMBER}"},
        {"form_type": "identity_copy", "storage_location": "cabinet\x002"},
        {"form_type": "identity_copy"},
        {"storage_location": "cabinet-2"},
        {"form_type": "identity_copy", "storage_location": "cabinet-2", "customer_id": "x"},
        {"form_type": "identity_copy", "storage_location": "cabinet-2", "retain_until": None},
    ],
    ids=[
        "unknown-type",
        "location-65",
        "location-empty",
        "location-blank",
        "location-individual-number",
        "location-control",
        "no-location",
        "no-type",
        "customer-in-body",
        "retention-in-body",
    ],
)
def test_bad_form_bodies_are_422_and_register_nothing(
    client: TestClient, as_member: AsMember, db: Engine, body: dict[str, Any]
) -> None:
    customer = _customer(client, as_member, seed=34)
    before = count_rows(db, AccessEvent)
    response = client.post(
        f"/visits/{customer.visit_id}/documents", json=body, headers=as_member(cast.SALES)
    )
    _is_problem(response, 422, "validation")
    assert INDIVIDUAL_NUMBER not in response.text
    assert count_rows(db, PaperForm) == 0
    assert count_rows(db, AccessEvent) == before


def test_a_location_of_64_characters_is_kept(client: TestClient, as_member: AsMember) -> None:
    customer = _customer(client, as_member, seed=35)
    location = "書庫" + "x" * 62
    form = _form(client, as_member(cast.SALES), customer.visit_id, location=location)
    assert form["storage_location"] == location


@pytest.mark.parametrize("member", [cast.AUDITOR, cast.ADMIN, cast.BILLING], ids=str)
def test_callers_without_a_store_may_not_register_forms(
    client: TestClient, as_member: AsMember, db: Engine, member: cast.Member | cast.Client
) -> None:
    customer = _customer(client, as_member, seed=36)
    headers = (
        login_client(client, member) if isinstance(member, cast.Client) else login(client, member)
    )
    response = _register(client, headers, customer.visit_id)
    _is_problem(response, 403, "forbidden")
    event = event_of(db, response)
    assert (event.outcome, event.action) == ("denied", "create")
    assert count_rows(db, PaperForm) == 0


# --- disposing of a form ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["shredded", "dissolved"])
def test_the_manager_disposes_of_a_due_form_of_their_store(
    client: TestClient, as_member: AsMember, db: Engine, method: str
) -> None:
    customer = _customer(client, as_member, seed=41)
    form = _form(client, as_member(cast.SALES), customer.visit_id)
    _make_due(db, form["id"])

    response = _dispose(client, as_member(cast.MANAGER), form["id"], method=method)
    assert response.status_code == 200, response.text
    disposed = response.json()
    assert disposed["status"] == "disposed"
    assert disposed["disposal_method"] == method
    assert disposed["disposed_by"] == cast.MANAGER.login
    assert disposed["registered_by"] == cast.SALES.login
    disposed_at = datetime.fromisoformat(disposed["disposed_at"])

    stored = _row(db, form["id"])
    assert stored.disposed_at == disposed_at
    assert stored.disposal_method == method
    event = event_of(db, response)
    assert (event.action, event.outcome, event.resource) == (
        "dispose",
        "allowed",
        f"documents/{form['id']}",
    )
    assert event.customer_ids == [customer.id]
    assert event.purpose is None and event.reason is None
    assert event.actor == cast.MANAGER.login


def test_disposing_twice_is_409_and_keeps_the_first_disposal(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = _customer(client, as_member, seed=42)
    form = _form(client, manager, customer.visit_id)
    _make_due(db, form["id"])
    assert _dispose(client, manager, form["id"], method="shredded").status_code == 200
    first = _row(db, form["id"])

    again = _dispose(client, manager, form["id"], method="dissolved", reason=EARLY)
    _is_problem(again, 409, "already-disposed")
    stored = _row(db, form["id"])
    assert (stored.disposed_at, stored.disposal_method) == (first.disposed_at, "shredded")
    assert len(_dispose_events(db)) == 1


def test_concurrent_disposals_dispose_once(
    client: TestClient, as_member: AsMember, db: Engine, settings: Settings
) -> None:
    manager = as_member(cast.MANAGER)
    customer = _customer(client, as_member, seed=43)
    form = _form(client, manager, customer.visit_id)
    _make_due(db, form["id"])
    path = f"/documents/{form['id']}/dispose"
    responses = concurrently(
        settings,
        [
            ("POST", path, {"method": "shredded"}, manager),
            ("POST", path, {"method": "dissolved"}, manager),
        ],
    )
    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    assert _row(db, form["id"]).disposal_method == winner["disposal_method"]
    assert len(_dispose_events(db)) == 1


@pytest.mark.parametrize(
    "retain_until",
    [None, date(2999, 12, 31), "tomorrow"],
    ids=["kept-while-basis-lasts", "far-future", "tomorrow"],
)
def test_a_form_in_retention_is_disposed_of_early_only_with_a_reason(
    client: TestClient,
    as_member: AsMember,
    db: Engine,
    retain_until: date | str | None,
) -> None:
    manager = as_member(cast.MANAGER)
    customer = _customer(client, as_member, seed=44)
    form = _form(client, manager, customer.visit_id)
    if retain_until == "tomorrow":
        retain_until = today_in_japan() + timedelta(days=2)  # still in retention whatever the hour
    _set(db, form["id"], retain_until=retain_until)

    refused = _dispose(client, manager, form["id"], method="shredded")
    _is_problem(refused, 409, "retention-not-ended")
    assert _row(db, form["id"]).disposed_at is None
    assert _dispose_events(db) == []

    allowed = _dispose(client, manager, form["id"], method="shredded", reason=f"  {EARLY}  ")
    assert allowed.status_code == 200, allowed.text
    event = event_of(db, allowed)
    assert (event.action, event.reason) == ("dispose", EARLY)
    assert _row(db, form["id"]).disposed_at is not None


def test_a_reason_on_a_due_form_is_recorded_too(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = _customer(client, as_member, seed=45)
    form = _form(client, manager, customer.visit_id)
    _make_due(db, form["id"])
    response = _dispose(client, manager, form["id"], method="dissolved", reason=EARLY)
    assert response.status_code == 200, response.text
    assert event_of(db, response).reason == EARLY


@pytest.mark.parametrize(
    "body",
    [
        {"method": "burned", "reason": EARLY},
        {"method": "SHREDDED", "reason": EARLY},
        {"reason": EARLY},
        {"method": "shredded", "reason": "短すぎる理由です。"},  # 9 characters
        {"method": "shredded", "reason": "あ" * 501},
        {"method": "shredded", "reason": f"マイナンバー {INDIVIDUAL_NUMBER} 記載のため"},
        {"method": "shredded", "reason": f"{EARLY}\u0007"},
        {"method": "shredded", "reason": EARLY, "disposed_by": "manager2"},
    ],
    ids=[
        "unknown-method",
        "method-case",
        "no-method",
        "reason-short",
        "reason-long",
        "reason-individual-number",
        "reason-control",
        "unknown-field",
    ],
)
def test_bad_disposals_are_422_and_change_nothing(
    client: TestClient, as_member: AsMember, db: Engine, body: dict[str, Any]
) -> None:
    manager = as_member(cast.MANAGER)
    customer = _customer(client, as_member, seed=46)
    form = _form(client, manager, customer.visit_id)
    response = _dispose(client, manager, form["id"], **body)
    _is_problem(response, 422, "validation")
    assert INDIVIDUAL_NUMBER not in response.text
    assert _row(db, form["id"]).disposed_at is None
    assert _dispose_events(db) == []


def test_a_reason_of_10_and_of_500_characters_is_accepted(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = _customer(client, as_member, seed=47)
    for reason in ("あ" * 10, "い" * 500):
        form = _form(client, manager, customer.visit_id)
        response = _dispose(client, manager, form["id"], method="shredded", reason=reason)
        assert response.status_code == 200, response.text
        assert event_of(db, response).reason == reason


def test_another_stores_form_reads_as_not_found_to_its_manager(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    customer = _customer(client, as_member, seed=48)
    form = _form(client, as_member(cast.SALES), customer.visit_id)
    _make_due(db, form["id"])
    other = as_member(cast.MANAGER_OTHER_STORE)
    for form_id in (form["id"], str(uuid.uuid4()), "not-a-form-id"):
        _is_problem(_dispose(client, other, form_id, method="shredded"), 404, "not-found")
    assert _row(db, form["id"]).disposed_at is None
    assert _dispose_events(db) == []


@pytest.mark.parametrize("member", [cast.SALES, cast.TECHNICIAN, cast.AUDITOR, cast.ADMIN], ids=str)
def test_only_managers_dispose_of_forms(
    client: TestClient, as_member: AsMember, db: Engine, member: cast.Member
) -> None:
    customer = _customer(client, as_member, seed=49)
    form = _form(client, as_member(cast.SALES), customer.visit_id)
    _make_due(db, form["id"])
    response = _dispose(client, login(client, member), form["id"], method="shredded")
    _is_problem(response, 403, "forbidden")
    event = event_of(db, response)
    assert (event.outcome, event.action, event.resource) == (
        "denied",
        "dispose",
        f"documents/{form['id']}/dispose",
    )
    assert _row(db, form["id"]).disposed_at is None


# --- reading the register -----------------------------------------------------------------------


def _forms_of_both_stores(
    client: TestClient, as_member: AsMember, db: Engine
) -> dict[str, dict[str, Any]]:
    """S001: a kept identity copy, a due repair order, a disposed consent form, a kept other;
    S002: a due application. Registered an hour apart, oldest first in this order."""
    here = _customer(client, as_member, seed=51)
    there = register_customer(client, as_member(cast.SALES_OTHER_STORE), seed=52)
    sales, sales2 = as_member(cast.SALES), as_member(cast.SALES_OTHER_STORE)
    forms = {
        "kept": _form(client, sales, here.visit_id, form_type="identity_copy"),
        "due": _form(client, sales, here.visit_id, form_type="repair_order"),
        "disposed": _form(client, sales, here.visit_id, form_type="consent_form"),
        "other": _form(client, sales, here.visit_id, form_type="other", location="棚-3"),
        "there": _form(client, sales2, there.visit_id, form_type="application"),
    }
    start = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
    for hours, form in enumerate(forms.values()):
        _set(db, form["id"], registered_at=start + timedelta(hours=hours))
    _make_due(db, forms["due"]["id"])
    _make_due(db, forms["there"]["id"])
    _set(db, forms["other"]["id"], retain_until=date(2999, 1, 1))
    _set(db, forms["disposed"]["id"], retain_until=date(2020, 1, 1))
    disposed = _dispose(client, as_member(cast.MANAGER), forms["disposed"]["id"], method="shredded")
    assert disposed.status_code == 200, disposed.text
    return forms


def test_the_manager_reads_their_stores_register_newest_first_with_filters(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    forms = _forms_of_both_stores(client, as_member, db)
    manager = as_member(cast.MANAGER)
    ids = {name: form["id"] for name, form in forms.items()}

    def listed(**params: Any) -> list[str]:
        return _ids(client.get("/documents", params=params, headers=manager))

    assert listed() == [ids["other"], ids["disposed"], ids["due"], ids["kept"]]
    assert listed(status="kept") == [ids["other"], ids["kept"]]
    assert listed(status="due") == [ids["due"]]
    assert listed(status="disposed") == [ids["disposed"]]
    assert listed(form_type="repair_order") == [ids["due"]]
    assert listed(form_type="application") == []  # S002's, not theirs
    assert listed(store="S001", status="kept", form_type="identity_copy") == [ids["kept"]]

    response = client.get("/documents", headers=manager)
    assert response.headers["cache-control"] == "no-store"
    items = {item["id"]: item for item in response.json()["items"]}
    assert {item["status"] for item in items.values()} == {"kept", "due", "disposed"}
    assert items[ids["disposed"]]["disposed_by"] == cast.MANAGER.login
    for item in items.values():
        assert set(item) == FORM_KEYS
    # Reading the register is not an access event: it holds no personal data.
    assert events_of(db, response) == []


def test_a_manager_asking_for_another_stores_register_is_refused_and_recorded(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    _forms_of_both_stores(client, as_member, db)
    for store in ("S002", "S999"):
        response = client.get(
            "/documents", params={"store": store}, headers=as_member(cast.MANAGER)
        )
        _is_problem(response, 403, "forbidden")
        assert "S999" not in response.text
        event = event_of(db, response)
        assert (event.outcome, event.action, event.resource) == ("denied", "read", "documents")


def test_an_auditor_reads_any_stores_register(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    forms = _forms_of_both_stores(client, as_member, db)
    auditor = login(client, cast.AUDITOR)
    everything = _ids(client.get("/documents", headers=auditor))
    assert everything == [forms[name]["id"] for name in reversed(list(forms))]
    there = client.get("/documents", params={"store": "S002"}, headers=auditor)
    assert _ids(there) == [forms["there"]["id"]]
    assert there.json()["items"][0]["store"] == "S002"
    due = client.get("/documents", params={"due": "true"}, headers=auditor)
    assert _ids(due) == [forms["due"]["id"], forms["there"]["id"]]
    _is_problem(
        client.get("/documents", params={"store": "S999"}, headers=auditor), 404, "not-found"
    )


def test_due_true_lists_due_forms_oldest_first_page_by_page(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = _customer(client, as_member, seed=53)
    forms = [_form(client, manager, customer.visit_id) for _ in range(5)]
    start = datetime(2023, 1, 10, 1, 0, tzinfo=UTC)
    for days, form in enumerate(forms):
        _set(db, form["id"], registered_at=start + timedelta(days=days))
    # Two of them share a time: the id breaks the tie, and no page skips or repeats one.
    _set(db, forms[3]["id"], registered_at=start + timedelta(days=2))
    for form in forms:
        _make_due(db, form["id"])
    kept = _form(client, manager, customer.visit_id)
    _set(db, kept["id"], registered_at=start)

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"due": "true", "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/documents", params=params, headers=manager)
        assert page.status_code == 200, page.text
        assert len(page.json()["items"]) <= 2
        seen.extend(page.json()["items"])
        cursor = page.json()["next"]
        if cursor is None:
            break
    assert sorted(item["id"] for item in seen) == sorted(form["id"] for form in forms)
    keys = [(item["registered_at"], item["id"]) for item in seen]
    assert keys == sorted(keys)
    assert all(item["status"] == "due" for item in seen)
    # The same filter newest first, as a status.
    newest = _ids(client.get("/documents", params={"status": "due"}, headers=manager))
    assert newest == [item["id"] for item in reversed(seen)]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "lost"},
        {"form_type": "passport_copy"},
        {"due": "maybe"},
        {"due": "true", "status": "kept"},
        {"due": "true", "status": "disposed"},
        {"limit": 0},
        {"limit": 501},
        {"cursor": "not-a-cursor"},
        {"store": "S" * 17},
    ],
    ids=[
        "unknown-status",
        "unknown-type",
        "due-not-boolean",
        "due-and-kept",
        "due-and-disposed",
        "limit-0",
        "limit-501",
        "bad-cursor",
        "store-too-long",
    ],
)
def test_bad_register_queries_are_422(
    client: TestClient, as_member: AsMember, params: dict[str, Any]
) -> None:
    response = client.get("/documents", params=params, headers=as_member(cast.MANAGER))
    _is_problem(response, 422, "validation")


@pytest.mark.parametrize("member", [cast.SALES, cast.TECHNICIAN, cast.ADMIN], ids=str)
def test_staff_other_than_managers_and_auditors_may_not_read_the_register(
    client: TestClient, as_member: AsMember, db: Engine, member: cast.Member
) -> None:
    response = client.get("/documents", params={"due": "true"}, headers=login(client, member))
    _is_problem(response, 403, "forbidden")
    event = event_of(db, response)
    assert (event.outcome, event.action, event.resource) == ("denied", "read", "documents")


def test_without_a_token_the_register_answers_401(client: TestClient) -> None:
    some_id = str(uuid.uuid4())
    for response in (
        client.get("/documents"),
        client.post(f"/documents/{some_id}/dispose", json={"method": "shredded"}),
        client.post(
            f"/visits/{some_id}/documents",
            json={"form_type": "other", "storage_location": "x"},
        ),
        # A malformed body does not hide the missing token.
        client.post(
            f"/documents/{some_id}/dispose",
            content=b"{",
            headers={"Content-Type": "application/json"},
        ),
    ):
        _is_problem(response, 401, "unauthorized")


# --- the printable list -------------------------------------------------------------------------


def test_the_due_list_is_a_printable_page_when_the_browser_asks(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    forms = _forms_of_both_stores(client, as_member, db)
    manager = {**as_member(cast.MANAGER), "Accept": BROWSER_ACCEPT}
    # One more due form, whose location needs escaping.
    here = forms["kept"]
    tricky = _form(
        client, as_member(cast.SALES), here["visit_id"], location='<b>棚&"2"</b>', form_type="other"
    )
    _make_due(db, tricky["id"])

    response = client.get("/documents", params={"due": "true"}, headers=manager)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    page = response.text
    for heading in ("保管場所", "書類の種類", "受付日", "保存期限", "顧客ID", "済"):
        assert f"<th>{heading}</th>" in page
    assert page.count("☐") == 2  # a box to tick per due form of this store
    assert forms["due"]["id"] in page and tricky["id"] in page
    assert forms["kept"]["id"] not in page and forms["there"]["id"] not in page
    assert "修理受付票" in page and "cabinet-2" in page
    assert "2024-05-01" in page  # registered 2024-05-01 12:00 in Tokyo
    assert forms["due"]["customer_id"] in page
    assert "&lt;b&gt;棚&amp;&quot;2&quot;&lt;/b&gt;" in page and "<b>棚" not in page


def test_the_printable_page_carries_no_personal_data(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    customer = _customer(client, as_member, seed=54)
    form = _form(client, as_member(cast.SALES), customer.visit_id)
    _make_due(db, form["id"])
    headers = {**as_member(cast.MANAGER), "Accept": "text/html"}
    page = client.get("/documents", params={"due": "true"}, headers=headers).text
    assert customer.id in page
    for value in _personal_values(customer):
        assert value not in page


def test_the_printable_page_links_to_the_next_page(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = _customer(client, as_member, seed=55)
    for _ in range(3):
        _make_due(db, _form(client, manager, customer.visit_id)["id"])
    html = {**manager, "Accept": "text/html"}
    first = client.get("/documents", params={"due": "true", "limit": 2}, headers=html)
    assert first.text.count("☐") == 2
    json_next = client.get("/documents", params={"due": "true", "limit": 2}, headers=manager)
    cursor = json_next.json()["next"]
    assert cursor is not None
    assert f"cursor={cursor}" in first.text
    assert 'href="/documents?' in first.text
    last = client.get(
        "/documents", params={"due": "true", "limit": 2, "cursor": cursor}, headers=html
    )
    assert last.text.count("☐") == 1 and "cursor=" not in last.text


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "text/html;q=0.5, application/json", "text/plain"],
)
def test_api_clients_get_json(client: TestClient, as_member: AsMember, accept: str | None) -> None:
    headers = as_member(cast.MANAGER)
    if accept is not None:
        headers["Accept"] = accept
    response = client.get("/documents", params={"due": "true"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"items": [], "next": None}


def test_refusals_stay_problem_details_for_a_browser(
    client: TestClient, as_member: AsMember
) -> None:
    headers = {**as_member(cast.SALES), "Accept": BROWSER_ACCEPT}
    _is_problem(client.get("/documents", params={"due": "true"}, headers=headers), 403)


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("text/html", True),
        ("text/*", True),
        (BROWSER_ACCEPT, True),
        ("application/json, text/html", False),
        ("text/html, application/json;q=0.9", True),
        ("text/html;q=0, */*", False),
        ("text/html;q=nan", False),
        ("text/html;q=2", False),
        ("text/html;q=abc, application/json;q=0.1", False),
        ("TEXT/HTML", True),
        ("application/*;q=0.2, text/html;q=0.3", True),
    ],
)
def test_content_negotiation(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html
