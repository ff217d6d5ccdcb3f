"""Visits (receptions): opened at the caller's store, listed and read only there, a customer
attached once (an access event), notes encrypted, repairs moving forward only, and a visit that
no longer justifies access once it is closed, by hand or by the clock."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update

from app.config import Settings
from app.main import create_app
from app.models import AccessEvent, AccessEventCustomer, Visit
from tests import cast
from tests.conftest import SettingsFactory, login, login_client
from tests.world import KNOWN_PINS, open_visit, presence_of, purpose, register_customer

AsMember = Callable[..., dict[str, str]]
PROBLEM = "application/problem+json"
NON_REPAIR_TYPES = ["new_contract", "model_change", "plan_change", "payment", "inquiry", "other"]
REPAIR = {"device_model": "Galaxy S24", "symptom": "画面が割れて表示されない"}
# 12 digits whose last is the Individual Number check digit of the first 11 (computed by hand:
# weights 2..7,2..6 from the right give 212; 212 % 11 = 3; 11 - 3 = 8).
INDIVIDUAL_NUMBER = "123456789018"
NOT_AN_INDIVIDUAL_NUMBER = "123456789012"  # same digits, wrong check digit


def _manager_reading_texts(as_member: AsMember) -> dict[str, str]:
    """A manager who gives a purpose whose row has `repairs` and a reason: sees visit texts."""
    return purpose(as_member(cast.MANAGER), "support", reason="来店時のメモ内容の確認のため")


def _attach(customer_id: str) -> dict[str, Any]:
    """An attach body with the customer's proof of presence (their PIN)."""
    return {"customer_id": customer_id, "presence": presence_of(customer_id.lower())}


def _post(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    customer_id = body.get("customer_id")
    if isinstance(customer_id, str) and customer_id.lower() in KNOWN_PINS:
        body.setdefault("presence", presence_of(customer_id.lower()))
    return client.post("/visits", json=body, headers=headers)


def _visit_count(db: Engine) -> int:
    with db.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(Visit)).scalar_one())


def _visit_row(db: Engine, visit_id: str) -> Visit:
    with db.connect() as connection:
        row = connection.execute(select(Visit).where(Visit.id == visit_id)).one()
    return Visit(**row._asdict())


def _set_times(db: Engine, visit_id: str, **values: datetime | None) -> None:
    with db.begin() as connection:
        connection.execute(update(Visit).where(Visit.id == visit_id).values(**values))


def _events(db: Engine, **where: Any) -> list[tuple[AccessEvent, list[str]]]:
    with db.connect() as connection:
        statement = select(AccessEvent).filter_by(**where).order_by(AccessEvent.at)
        events = [AccessEvent(**row._asdict()) for row in connection.execute(statement)]
        result = []
        for event in events:
            ids = connection.execute(
                select(AccessEventCustomer.customer_id)
                .where(AccessEventCustomer.event_id == event.id)
                .order_by(AccessEventCustomer.position)
            ).scalars()
            result.append((event, list(ids)))
    return result


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _is_problem(response: Any, status: int, slug: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    if slug is not None:
        assert response.json()["type"].endswith(f"/problems/{slug}")


Call = tuple[str, str, dict[str, Any] | None, dict[str, str]]


def concurrently(settings: Settings, calls: list[Call]) -> list[httpx.Response]:
    """Send the calls at once, interleaved on one event loop, to a second app process-alike."""

    async def run() -> list[httpx.Response]:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return list(
                    await asyncio.gather(
                        *(
                            http.request(method, url, json=body, headers=headers)
                            for method, url, body, headers in calls
                        )
                    )
                )
        finally:
            await app.state.runtime.engine.dispose()

    return asyncio.run(run())


def _open_ids(client: TestClient, headers: dict[str, str], **params: Any) -> list[str]:
    response = client.get("/visits", params={"status": "open", **params}, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# --- opening a visit ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "member", [cast.SALES, cast.TECHNICIAN, cast.MANAGER, cast.MANAGER_OTHER_STORE]
)
def test_store_staff_open_a_visit_at_their_own_store(
    client: TestClient, as_member: AsMember, db: Engine, member: cast.Member
) -> None:
    # No X-Access-Purpose: visits are the shop's own records.
    response = _post(client, as_member(member), type="inquiry")
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["store"] == member.store
    assert view["type"] == "inquiry"
    assert view["status"] == "open"
    assert view["closed_at"] is None
    assert view["customer_id"] is None
    assert view["repair"] is None
    assert _time(view["opened_at"]) is not None
    assert _time(view["opened_at"]).tzinfo is not None  # type: ignore[union-attr]
    uuid.UUID(view["id"])
    stored = _visit_row(db, view["id"])
    assert stored.closed_at is None
    with db.connect() as connection:
        from app.models import Staff, Store

        store_code = connection.execute(
            select(Store.code).where(Store.id == stored.store_id)
        ).scalar_one()
        opener = connection.execute(
            select(Staff.login).where(Staff.id == stored.opened_by)
        ).scalar_one()
    assert store_code == member.store
    assert opener == member.login


def test_the_store_comes_from_the_token_not_the_body(
    client: TestClient, as_member: AsMember
) -> None:
    response = _post(client, as_member(cast.SALES), type="inquiry", store="S002")
    _is_problem(response, 422, "validation")


@pytest.mark.parametrize("visit_type", NON_REPAIR_TYPES)
def test_every_non_repair_type_opens_and_closes_itself(
    client: TestClient, as_member: AsMember, db: Engine, visit_type: str
) -> None:
    response = _post(client, as_member(cast.SALES), type=visit_type)
    assert response.status_code == 201, response.text
    assert response.json()["type"] == visit_type
    assert response.json()["repair"] is None
    stored = _visit_row(db, response.json()["id"])
    assert stored.auto_close_at is not None
    assert stored.auto_close_at - stored.opened_at == timedelta(hours=4)


def test_a_repair_visit_carries_its_repair_and_starts_received(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    response = _post(client, as_member(cast.TECHNICIAN), type="repair", repair=REPAIR)
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["type"] == "repair"
    assert view["repair"]["status"] == "received"
    assert view["repair"]["device_model"] == REPAIR["device_model"]
    # Free text about a person is left out without a purpose header (see test_visit_texts.py).
    assert "symptom" not in view["repair"] and "notes" not in view
    assert _time(view["repair"]["updated_at"]) is not None
    stored = _visit_row(db, view["id"])
    assert stored.repair_status == "received"
    assert stored.auto_close_at is None
    # The symptom is personal data: encrypted at rest.
    assert stored.repair_symptom_enc is not None
    assert REPAIR["symptom"].encode() not in stored.repair_symptom_enc


@pytest.mark.parametrize(
    "body",
    [
        {"type": "repair"},
        {"type": "repair", "repair": {"device_model": "Pixel 9"}},
        {"type": "repair", "repair": {"symptom": "電源が入らない"}},
        {"type": "repair", "repair": {"device_model": "", "symptom": "電源が入らない"}},
        {"type": "new_contract", "repair": REPAIR},
        {"type": "inquiry", "repair": None, "purpose": "contract"},
        {"type": "inquiry", "store": "S001"},
        {"type": "repair", "repair": {**REPAIR, "status": "ready"}},
        {"type": "walk_in"},
        {},
        {"type": "inquiry", "notes": "x" * 2001},
        {"type": "inquiry", "customer_id": 12},
    ],
    ids=[
        "repair-without-repair",
        "repair-without-symptom",
        "repair-without-model",
        "repair-empty-model",
        "repair-on-non-repair",
        "unknown-field",
        "store-in-body",
        "status-at-creation",
        "unknown-type",
        "no-type",
        "notes-too-long",
        "customer-id-not-a-string",
    ],
)
def test_bad_visit_bodies_are_422_and_create_nothing(
    client: TestClient, as_member: AsMember, db: Engine, body: dict[str, Any]
) -> None:
    before = _visit_count(db)
    response = client.post("/visits", json=body, headers=as_member(cast.TECHNICIAN))
    _is_problem(response, 422, "validation")
    assert _visit_count(db) == before


@pytest.mark.parametrize(
    "member", [cast.AUDITOR, cast.ADMIN, cast.BILLING, cast.FRAUD], ids=lambda m: m.role
)
def test_callers_without_a_store_may_not_work_with_visits(
    client: TestClient, as_member: AsMember, db: Engine, member: cast.Member | cast.Client
) -> None:
    staff_visit = open_visit(client, as_member(cast.SALES))
    if isinstance(member, cast.Client):
        headers = login_client(client, member)
        name = member.name
    else:
        headers = login(client, member)
        name = member.login
    before = _visit_count(db)
    attempts = [
        client.post("/visits", json={"type": "inquiry"}, headers=headers),
        client.get("/visits", params={"status": "open"}, headers=headers),
        client.get(f"/visits/{staff_visit}", headers=headers),
        client.patch(f"/visits/{staff_visit}", json={"notes": "メモ"}, headers=headers),
        client.post(f"/visits/{staff_visit}/close", headers=headers),
    ]
    for response in attempts:
        _is_problem(response, 403, "forbidden")
        assert staff_visit not in response.text
    assert _visit_count(db) == before
    assert _visit_row(db, staff_visit).closed_at is None
    assert _visit_row(db, staff_visit).notes_enc is None
    denied = _events(db, actor=name, outcome="denied")
    assert len(denied) == len(attempts)
    assert {event.role for event, _ in denied} == {member.role}
    assert all(event.resource.startswith("visits") for event, _ in denied)
    assert [event.action for event, _ in denied] == ["create", "read", "read", "update", "update"]


def test_without_a_token_visits_answer_401(client: TestClient) -> None:
    _is_problem(client.post("/visits", json={"type": "inquiry"}), 401)
    _is_problem(client.get("/visits"), 401)


# --- Individual Numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [INDIVIDUAL_NUMBER, "1234 5678 9018", "1234-5678-9018", "１２３４５６７８９０１８"],
    ids=["plain", "spaced", "hyphenated", "full-width"],
)
@pytest.mark.parametrize("where", ["notes", "symptom", "device_model", "patched-notes"])
def test_an_individual_number_in_free_text_is_refused_and_not_echoed(
    client: TestClient, as_member: AsMember, db: Engine, where: str, written: str
) -> None:
    headers = as_member(cast.TECHNICIAN)
    text = f"お客様の番号 {written} を確認"
    visit_id = open_visit(client, headers, "repair")
    before = _visit_count(db)
    if where == "patched-notes":
        response = client.patch(f"/visits/{visit_id}", json={"notes": text}, headers=headers)
    elif where == "notes":
        response = _post(client, headers, type="inquiry", notes=text)
    else:
        repair = {**REPAIR, where: text}
        response = _post(client, headers, type="repair", repair=repair)
    _is_problem(response, 422, "validation")
    for form in (written, INDIVIDUAL_NUMBER, "1234", "9018"):
        assert form not in response.text
    assert _visit_count(db) == before
    assert _visit_row(db, visit_id).notes_enc is None


def test_a_twelve_digit_number_that_is_not_an_individual_number_is_kept(
    client: TestClient, as_member: AsMember
) -> None:
    notes = f"受付番号 {NOT_AN_INDIVIDUAL_NUMBER}"
    response = _post(client, _manager_reading_texts(as_member), type="inquiry", notes=notes)
    assert response.status_code == 201, response.text
    assert response.json()["notes"] == notes


# --- attaching a customer ----------------------------------------------------------------------


def test_opening_a_visit_for_a_customer_attaches_it_as_an_access_event(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES, terminal="POS-07")
    customer = register_customer(client, sales, seed=1)
    attaches_before = len(_events(db, action="attach"))
    response = _post(client, sales, type="payment", customer_id=customer.id)
    assert response.status_code == 201, response.text
    visit_id = response.json()["id"]
    assert response.json()["customer_id"] == customer.id
    assert _visit_row(db, visit_id).customer_id == customer.id
    attaches = _events(db, action="attach")
    assert len(attaches) == attaches_before + 1
    event, customer_ids = attaches[-1]
    assert customer_ids == [customer.id]
    assert event.actor == cast.SALES.login
    assert event.role == "sales"
    assert event.store == "S001"
    assert event.terminal == "POS-07"
    assert event.outcome == "allowed"
    assert event.resource == f"visits/{visit_id}"
    assert event.purpose is None


def test_the_customer_id_may_be_written_in_any_uuid_form(
    client: TestClient, as_member: AsMember
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=2)
    response = _post(client, sales, type="payment", customer_id=customer.id.upper())
    assert response.status_code == 201, response.text
    assert response.json()["customer_id"] == customer.id


@pytest.mark.parametrize(
    ("customer_id", "status", "slug"),
    [
        (str(uuid.uuid4()), 403, "presence-not-proven"),  # the answer of a wrong proof
        ("not-a-customer-id", 422, "validation"),
    ],
)
def test_opening_a_visit_for_an_unknown_customer_is_refused_and_creates_nothing(
    client: TestClient, as_member: AsMember, db: Engine, customer_id: str, status: int, slug: str
) -> None:
    before = _visit_count(db)
    presence = {"method": "pin", "pin": "4826"}
    response = _post(
        client, as_member(cast.SALES), type="payment", customer_id=customer_id, presence=presence
    )
    _is_problem(response, status, slug)
    assert customer_id not in response.text
    assert _visit_count(db) == before
    assert [e.outcome for e, _ in _events(db, action="attach")] == (
        ["denied"] if status == 403 else []
    )


def test_a_customer_is_attached_to_a_visit_once(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    first = register_customer(client, sales, seed=3)
    second = register_customer(client, sales, seed=4)
    visit_id = open_visit(client, sales, "inquiry")
    attaches_before = len(_events(db, action="attach"))

    response = client.patch(f"/visits/{visit_id}", json=_attach(first.id), headers=sales)
    assert response.status_code == 200, response.text
    assert response.json()["customer_id"] == first.id
    attaches = _events(db, action="attach")
    assert len(attaches) == attaches_before + 1
    assert attaches[-1][1] == [first.id]
    assert attaches[-1][0].resource == f"visits/{visit_id}"

    for other in (second.id, first.id):
        again = client.patch(f"/visits/{visit_id}", json=_attach(other), headers=sales)
        _is_problem(again, 409, "conflict")
    assert _visit_row(db, visit_id).customer_id == first.id
    assert len(_events(db, action="attach")) == attaches_before + 1


def test_concurrent_attaches_attach_one_customer(
    client: TestClient, as_member: AsMember, db: Engine, settings: Settings
) -> None:
    sales = as_member(cast.SALES)
    customers = [register_customer(client, sales, seed=20 + n).id for n in range(4)]
    visit_id = open_visit(client, sales, "inquiry")
    responses = concurrently(
        settings,
        [("PATCH", f"/visits/{visit_id}", _attach(cid), sales) for cid in customers],
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409, 409, 409], [r.text for r in responses]
    winner = next(r.json()["customer_id"] for r in responses if r.status_code == 200)
    assert _visit_row(db, visit_id).customer_id == winner
    attached = [
        ids for event, ids in _events(db, action="attach") if event.resource.endswith(visit_id)
    ]
    assert attached == [[winner]]


def test_attaching_an_unknown_customer_is_refused_and_leaves_the_visit_alone(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales, "inquiry")
    presence = {"method": "pin", "pin": "4826"}
    body = {"customer_id": str(uuid.uuid4()), "presence": presence, "notes": "来店メモ"}
    refused = client.patch(f"/visits/{visit_id}", json=body, headers=sales)
    _is_problem(refused, 403, "presence-not-proven")
    stored = _visit_row(db, visit_id)
    assert stored.customer_id is None
    assert stored.notes_enc is None
    _is_problem(client.patch(f"/visits/{visit_id}", json={"customer_id": None}, headers=sales), 422)


def test_an_attached_visit_justifies_reading_that_customer_only(
    client: TestClient, as_member: AsMember
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=5)
    other = register_customer(client, sales, seed=6)
    visit_id = open_visit(client, sales, "plan_change", customer_id=customer.id)
    read = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=visit_id)
    )
    assert read.status_code == 200, read.text
    wrong = client.get(f"/customers/{other.id}", headers=purpose(sales, "contract", visit=visit_id))
    _is_problem(wrong, 403, "visit-required")


# --- listing and reading -----------------------------------------------------------------------


def test_the_list_shows_this_stores_open_visits_newest_first(
    client: TestClient, as_member: AsMember
) -> None:
    sales, tech, other_store = (
        as_member(cast.SALES),
        as_member(cast.TECHNICIAN),
        as_member(cast.SALES_OTHER_STORE),
    )
    first = open_visit(client, sales, "inquiry")
    elsewhere = open_visit(client, other_store, "inquiry")
    second = open_visit(client, tech, "repair")
    closed = open_visit(client, sales, "payment")
    third = open_visit(client, sales, "other")
    assert client.post(f"/visits/{closed}/close", headers=sales).status_code == 200

    expected = [third, second, first]
    assert _open_ids(client, sales) == expected
    assert _open_ids(client, tech) == expected  # the store's list, not the person's
    response = client.get("/visits", headers=sales)  # status=open is the default
    assert [item["id"] for item in response.json()["items"]] == expected
    assert response.json()["next"] is None
    assert all(item["store"] == "S001" for item in response.json()["items"])
    assert _open_ids(client, other_store) == [elsewhere]
    assert elsewhere not in client.get("/visits", headers=sales).text


def test_the_list_pages_with_limit_and_cursor(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    opened = [open_visit(client, sales, "inquiry") for _ in range(5)]
    newest_first = list(reversed(opened))

    def pages(limit: int) -> list[list[str]]:
        result, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            body = client.get("/visits", params=params, headers=sales).json()
            result.append([item["id"] for item in body["items"]])
            cursor = body["next"]
            if cursor is None:
                return result

    assert pages(2) == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]
    assert pages(5) == [newest_first]
    assert pages(500) == [newest_first]

    # Visits opened in the same instant still page without loss or repetition (the id breaks ties).
    same = datetime(2030, 1, 1, 9, 0, tzinfo=UTC) - timedelta(days=365 * 10)
    for visit_id in opened:
        _set_times(
            db, visit_id, opened_at=same, auto_close_at=datetime.now(UTC) + timedelta(hours=1)
        )
    paged = [visit_id for page in pages(2) for visit_id in page]
    assert sorted(paged) == sorted(opened)
    assert paged == sorted(opened, reverse=True)


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "!!!not-a-cursor!!!"},
        {"cursor": _cursor("garbage")},
        {"cursor": _cursor("2025-01-01T00:00:00+00:00|not-a-uuid")},
        {"cursor": _cursor(f"yesterday|{uuid.uuid4()}")},
        {"cursor": _cursor(f"2025-01-01T00:00:00|{uuid.uuid4()}")},  # no offset
        {"cursor": base64.urlsafe_b64encode(b"\xff\xfe|x").decode()},
        {"cursor": "x" * 201},
        {"limit": 0},
        {"limit": 501},
        {"limit": "ten"},
        {"status": "closed"},
    ],
    ids=[
        "not-base64",
        "no-separator",
        "bad-id",
        "bad-time",
        "naive-time",
        "not-utf8",
        "too-long",
        "limit-0",
        "limit-501",
        "limit-text",
        "status-closed",
    ],
)
def test_bad_list_parameters_are_422(
    client: TestClient, as_member: AsMember, params: dict[str, Any]
) -> None:
    open_visit(client, as_member(cast.SALES), "inquiry")
    response = client.get("/visits", params=params, headers=as_member(cast.SALES))
    _is_problem(response, 422, "validation")


def test_another_stores_visit_reads_as_not_found(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    theirs = open_visit(client, as_member(cast.SALES_OTHER_STORE), "inquiry")
    mine = open_visit(client, sales, "inquiry")
    assert client.get(f"/visits/{mine}", headers=sales).json()["id"] == mine

    def answer(response: Any) -> tuple[int, Any, Any]:
        body = response.json()
        return response.status_code, body["type"], body["detail"]

    def attempts(visit_id: str) -> list[Any]:
        return [
            client.get(f"/visits/{visit_id}", headers=sales),
            client.patch(f"/visits/{visit_id}", json={"notes": "メモ"}, headers=sales),
            client.post(f"/visits/{visit_id}/close", headers=sales),
        ]

    other_store = attempts(theirs)
    for response in other_store:
        _is_problem(response, 404, "not-found")
        assert theirs not in response.text
    # The same answer as for an id that does not exist, or is not even an id.
    for visit_id in (str(uuid.uuid4()), "not-a-visit"):
        assert [answer(r) for r in attempts(visit_id)] == [answer(r) for r in other_store]
    stored = _visit_row(db, theirs)
    assert stored.closed_at is None
    assert stored.notes_enc is None


# --- notes ------------------------------------------------------------------------------------


def test_notes_are_updated_and_stored_encrypted(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales, reader = as_member(cast.SALES), _manager_reading_texts(as_member)
    first_note = "機種変更を検討中、青色を希望"
    second_note = "ご家族と再来店予定 山田様"
    created = _post(client, sales, type="model_change", notes=first_note)
    assert created.status_code == 201, created.text
    visit_id = created.json()["id"]
    assert "notes" not in created.json()  # sales never read visit notes
    assert client.get(f"/visits/{visit_id}", headers=reader).json()["notes"] == first_note
    stored = _visit_row(db, visit_id)
    assert stored.notes_enc is not None
    assert first_note.encode() not in stored.notes_enc

    patched = client.patch(f"/visits/{visit_id}", json={"notes": second_note}, headers=sales)
    assert patched.status_code == 200, patched.text
    assert "notes" not in patched.json()
    assert client.get(f"/visits/{visit_id}", headers=reader).json()["notes"] == second_note
    listed = client.get("/visits", headers=reader).json()["items"]
    assert next(item for item in listed if item["id"] == visit_id)["notes"] == second_note
    stored = _visit_row(db, visit_id)
    assert stored.notes_enc is not None
    for text in (first_note, second_note, "山田"):
        assert text.encode() not in stored.notes_enc

    cleared = client.patch(f"/visits/{visit_id}", json={"notes": None}, headers=reader)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["notes"] is None
    assert _visit_row(db, visit_id).notes_enc is None


def test_an_empty_patch_is_422(client: TestClient, as_member: AsMember) -> None:
    sales = as_member(cast.SALES)
    visit_id = open_visit(client, sales, "inquiry")
    _is_problem(client.patch(f"/visits/{visit_id}", json={}, headers=sales), 422)
    _is_problem(client.patch(f"/visits/{visit_id}", json={"type": "repair"}, headers=sales), 422)


# --- the repair workflow ----------------------------------------------------------------------


def _repair_status(client: TestClient, headers: dict[str, str], visit_id: str, status: str) -> Any:
    return client.patch(f"/visits/{visit_id}", json={"repair": {"status": status}}, headers=headers)


def test_the_repair_status_moves_forward_only(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    tech = as_member(cast.TECHNICIAN)
    visit_id = open_visit(client, tech, "repair")
    first_update = _time(
        client.get(f"/visits/{visit_id}", headers=tech).json()["repair"]["updated_at"]
    )

    for refused in ("received",):
        _is_problem(_repair_status(client, tech, visit_id, refused), 409, "conflict")
    moved = _repair_status(client, tech, visit_id, "diagnosing")
    assert moved.status_code == 200, moved.text
    assert moved.json()["repair"]["status"] == "diagnosing"
    assert _time(moved.json()["repair"]["updated_at"]) >= first_update  # type: ignore[operator]
    assert moved.json()["status"] == "open"

    for refused in ("diagnosing", "received"):
        _is_problem(_repair_status(client, tech, visit_id, refused), 409, "conflict")
    assert _visit_row(db, visit_id).repair_status == "diagnosing"

    # Forward by more than one step is still forward (a quick fix needs no "repairing").
    skipped = _repair_status(client, tech, visit_id, "ready")
    assert skipped.status_code == 200, skipped.text
    assert skipped.json()["repair"]["status"] == "ready"
    for refused in ("repairing", "diagnosing", "received", "ready"):
        _is_problem(_repair_status(client, tech, visit_id, refused), 409, "conflict")
    assert _visit_row(db, visit_id).repair_status == "ready"
    _is_problem(_repair_status(client, tech, visit_id, "fixed"), 422, "validation")


def test_returning_the_device_closes_the_repair_visit(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    tech = as_member(cast.TECHNICIAN)
    customer = register_customer(client, as_member(cast.SALES), seed=7)
    visit_id = open_visit(client, tech, "repair", customer_id=customer.id)
    read = client.get(f"/customers/{customer.id}", headers=purpose(tech, "repair", visit=visit_id))
    assert read.status_code == 200, read.text

    returned = _repair_status(client, tech, visit_id, "returned")
    assert returned.status_code == 200, returned.text
    assert returned.json()["repair"]["status"] == "returned"
    assert returned.json()["status"] == "closed"
    closed_at = _time(returned.json()["closed_at"])
    assert closed_at is not None
    assert _visit_row(db, visit_id).closed_at == closed_at
    assert visit_id not in _open_ids(client, tech)
    _is_problem(_repair_status(client, tech, visit_id, "returned"), 409, "conflict")
    _is_problem(client.post(f"/visits/{visit_id}/close", headers=tech), 409, "conflict")
    again = client.get(f"/customers/{customer.id}", headers=purpose(tech, "repair", visit=visit_id))
    _is_problem(again, 403, "visit-required")


def test_concurrent_status_changes_never_move_backwards(
    client: TestClient, as_member: AsMember, db: Engine, settings: Settings
) -> None:
    tech = as_member(cast.TECHNICIAN)
    order = ["received", "diagnosing", "repairing", "ready"]
    wanted = order[1:] * 2
    for _ in range(3):
        visit_id = open_visit(client, tech, "repair")
        calls: list[Call] = [
            ("PATCH", f"/visits/{visit_id}", {"repair": {"status": status}}, tech)
            for status in wanted
        ]
        responses = concurrently(settings, calls)
        assert {r.status_code for r in responses} <= {200, 409}, [r.text for r in responses]
        moved = [
            order.index(status)
            for status, response in zip(wanted, responses, strict=True)
            if response.status_code == 200
        ]
        # Each accepted change saw the one before it: the furthest accepted status stands.
        assert moved
        assert _visit_row(db, visit_id).repair_status == order[max(moved)]


@pytest.mark.parametrize("visit_type", ["new_contract", "inquiry"])
def test_a_repair_status_on_a_non_repair_visit_is_409(
    client: TestClient, as_member: AsMember, db: Engine, visit_type: str
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=8)
    visit_id = open_visit(client, sales, visit_type)
    # Nothing of a refused patch is kept, not even the parts that were fine on their own.
    body = {"repair": {"status": "diagnosing"}, "notes": "メモ", **_attach(customer.id)}
    attaches_before = len(_events(db, action="attach"))
    _is_problem(client.patch(f"/visits/{visit_id}", json=body, headers=sales), 409, "conflict")
    stored = _visit_row(db, visit_id)
    assert stored.repair_status is None
    assert stored.notes_enc is None
    assert stored.customer_id is None
    assert len(_events(db, action="attach")) == attaches_before


# --- closing ----------------------------------------------------------------------------------


def test_closing_a_visit_ends_the_access_it_justified(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=9)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    assert client.get(f"/customers/{customer.id}", headers=headers).status_code == 200

    closed = client.post(f"/visits/{customer.visit_id}/close", headers=sales)
    assert closed.status_code == 200, closed.text
    view = closed.json()
    assert view["id"] == customer.visit_id
    assert view["status"] == "closed"
    assert view["customer_id"] == customer.id
    closed_at = _time(view["closed_at"])
    assert closed_at is not None
    assert abs(closed_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert _visit_row(db, customer.visit_id).closed_at == closed_at
    assert client.get(f"/visits/{customer.visit_id}", headers=sales).json()["status"] == "closed"
    assert customer.visit_id not in _open_ids(client, sales)

    _is_problem(client.post(f"/visits/{customer.visit_id}/close", headers=sales), 409, "conflict")
    assert _visit_row(db, customer.visit_id).closed_at == closed_at
    _is_problem(
        client.patch(f"/visits/{customer.visit_id}", json={"notes": "追記"}, headers=sales),
        409,
        "conflict",
    )
    _is_problem(client.get(f"/customers/{customer.id}", headers=headers), 403, "visit-required")
    denied = _events(db, actor=cast.SALES.login, outcome="denied")
    assert denied[-1][0].denial is not None
    assert denied[-1][1] == [customer.id]


def test_a_colleague_at_the_same_store_may_close_a_visit(
    client: TestClient, as_member: AsMember
) -> None:
    visit_id = open_visit(client, as_member(cast.SALES), "inquiry")
    response = client.post(f"/visits/{visit_id}/close", headers=as_member(cast.MANAGER))
    assert response.status_code == 200, response.text


# --- closing by the clock ---------------------------------------------------------------------


def test_the_auto_close_delay_is_configurable(make_settings: SettingsFactory, db: Engine) -> None:
    with TestClient(create_app(make_settings(visit_auto_close_hours=1.5))) as other:
        headers = login(other, cast.SALES)
        visit_id = open_visit(other, headers, "inquiry")
        repair_id = open_visit(other, headers, "repair")
    stored = _visit_row(db, visit_id)
    assert stored.auto_close_at is not None
    assert stored.auto_close_at - stored.opened_at == timedelta(hours=1.5)
    assert _visit_row(db, repair_id).auto_close_at is None


def test_an_expired_visit_is_closed_at_its_auto_close_time(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=10)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    assert client.get(f"/customers/{customer.id}", headers=headers).status_code == 200
    still_open = open_visit(client, sales, "inquiry")

    opened_at = datetime.now(UTC) - timedelta(hours=5)
    auto_close_at = opened_at + timedelta(hours=4)
    _set_times(db, customer.visit_id, opened_at=opened_at, auto_close_at=auto_close_at)

    # Before anything writes it, the visit already no longer counts as open.
    view = client.get(f"/visits/{customer.visit_id}", headers=sales).json()
    assert view["status"] == "closed"
    assert _time(view["closed_at"]) == auto_close_at
    _is_problem(client.get(f"/customers/{customer.id}", headers=headers), 403, "visit-required")
    _is_problem(
        client.patch(f"/visits/{customer.visit_id}", json={"notes": "追記"}, headers=sales), 409
    )
    _is_problem(client.post(f"/visits/{customer.visit_id}/close", headers=sales), 409)

    assert _open_ids(client, sales) == [still_open]
    # The list gave it a real closed_at: when it closed itself, not when someone looked.
    assert _visit_row(db, customer.visit_id).closed_at == auto_close_at
    assert _visit_row(db, still_open).closed_at is None


def test_an_expired_visit_of_another_store_is_left_to_that_store(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    theirs = open_visit(client, as_member(cast.SALES_OTHER_STORE), "inquiry")
    past = datetime.now(UTC) - timedelta(hours=1)
    _set_times(db, theirs, opened_at=past - timedelta(hours=4), auto_close_at=past)
    assert _open_ids(client, as_member(cast.SALES)) == []
    assert _visit_row(db, theirs).closed_at is None
    assert _open_ids(client, as_member(cast.SALES_OTHER_STORE)) == []
    assert _visit_row(db, theirs).closed_at == past


def test_a_repair_visit_stays_open_until_returned(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    tech = as_member(cast.TECHNICIAN)
    customer = register_customer(client, as_member(cast.SALES), seed=11)
    visit_id = open_visit(client, tech, "repair", customer_id=customer.id)
    assert _visit_row(db, visit_id).auto_close_at is None
    _set_times(db, visit_id, opened_at=datetime.now(UTC) - timedelta(days=30))

    assert visit_id in _open_ids(client, tech)
    stored = _visit_row(db, visit_id)
    assert stored.closed_at is None
    assert stored.auto_close_at is None
    assert client.get(f"/visits/{visit_id}", headers=tech).json()["status"] == "open"
    read = client.get(f"/customers/{customer.id}", headers=purpose(tech, "repair", visit=visit_id))
    assert read.status_code == 200, read.text
    assert _repair_status(client, tech, visit_id, "diagnosing").status_code == 200


# --- Idempotency-Key --------------------------------------------------------------------------


def test_a_retry_with_the_same_key_gets_the_first_visit(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=12)
    headers = {**sales, "Idempotency-Key": "pos-07:retry-0001"}
    body = {"type": "payment", **_attach(customer.id), "notes": "支払い方法の変更"}
    before = _visit_count(db)
    attaches_before = len(_events(db, action="attach"))

    first = client.post("/visits", json=body, headers=headers)
    assert first.status_code == 201, first.text
    retry = client.post("/visits", json=body, headers=headers)
    assert retry.status_code == 201, retry.text
    assert retry.json() == first.json()
    assert _visit_count(db) == before + 1
    assert len(_events(db, action="attach")) == attaches_before + 1

    # Without the key the same body is a second visit: the key is what makes a retry a retry.
    assert client.post("/visits", json=body, headers=sales).json()["id"] != first.json()["id"]
    assert _visit_count(db) == before + 2


def test_a_retry_finds_its_visit_even_after_it_closed(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    headers = {**as_member(cast.SALES), "Idempotency-Key": "retry-after-close"}
    first = client.post("/visits", json={"type": "inquiry"}, headers=headers)
    assert first.status_code == 201, first.text
    client.post(f"/visits/{first.json()['id']}/close", headers=headers)
    retry = client.post("/visits", json={"type": "inquiry"}, headers=headers)
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["status"] == "closed"


def test_the_same_key_with_another_body_is_a_mismatch(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    headers = {**as_member(cast.SALES), "Idempotency-Key": "terminal-3.request-42"}
    first = client.post("/visits", json={"type": "inquiry"}, headers=headers)
    assert first.status_code == 201, first.text
    before = _visit_count(db)
    for body in (
        {"type": "payment"},
        {"type": "inquiry", "notes": "別の依頼"},
        {"type": "repair", "repair": REPAIR},
    ):
        response = client.post("/visits", json=body, headers=headers)
        _is_problem(response, 409, "idempotency-mismatch")
    assert _visit_count(db) == before
    again = client.post("/visits", json={"type": "inquiry"}, headers=headers)
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    "key",
    [
        "short",
        "1234567",
        "has spaces in it",
        "slash/is/not/allowed",
        "ｆｕｌｌｗｉｄｔｈ-key".encode(),
        "k" * 129,
        "",
    ],
    ids=["short", "seven", "spaces", "slashes", "full-width", "too-long", "empty"],
)
def test_a_malformed_key_is_400_and_creates_nothing(
    client: TestClient, as_member: AsMember, db: Engine, key: str | bytes
) -> None:
    before = _visit_count(db)
    headers: dict[str, Any] = {**as_member(cast.SALES), "Idempotency-Key": key}
    response = client.post("/visits", json={"type": "inquiry"}, headers=headers)
    _is_problem(response, 400, "bad-header")
    assert _visit_count(db) == before


def test_the_longest_key_is_accepted(client: TestClient, as_member: AsMember) -> None:
    headers = {**as_member(cast.SALES), "Idempotency-Key": "k" * 128}
    first = client.post("/visits", json={"type": "inquiry"}, headers=headers)
    assert first.status_code == 201, first.text
    retry = client.post("/visits", json={"type": "inquiry"}, headers=headers)
    assert retry.json()["id"] == first.json()["id"]


def test_keys_belong_to_their_caller(client: TestClient, as_member: AsMember, db: Engine) -> None:
    key = {"Idempotency-Key": "shared-key-0001"}
    body = {"type": "inquiry"}
    ids = {
        member.login: client.post("/visits", json=body, headers={**as_member(member), **key})
        for member in (cast.SALES, cast.MANAGER, cast.SALES_OTHER_STORE)
    }
    for member_login, response in ids.items():
        assert response.status_code == 201, (member_login, response.text)
    assert len({response.json()["id"] for response in ids.values()}) == 3
    assert ids[cast.SALES_OTHER_STORE.login].json()["store"] == "S002"
    # And each caller's retry still finds their own.
    retry = client.post("/visits", json=body, headers={**as_member(cast.MANAGER), **key})
    assert retry.json()["id"] == ids[cast.MANAGER.login].json()["id"]
