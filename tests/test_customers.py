"""Customers: registration within a visit, reads in the check order, corrections, states.

Every refusal at steps 3-4 answers the same for an existing, an unknown and a malformed id, and
commits a denied event; only a caller whose context allows the record learns it does not exist.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.models import ConsentEvent, Customer, CustomerKey, IdempotentRequest, Visit
from app.models.base import utcnow
from app.validation.mynumber import is_individual_number
from tests import cast
from tests.access_log import count_rows, event_of, events_of
from tests.world import customer_body, open_visit, purpose, register_customer

Headers = dict[str, str]
REASON = "お客様からの開示請求に対応するため"
SALES_CONTRACT_GROUPS = [
    "address",
    "birth_date",
    "consents",
    "contact",
    "contracts",
    "device",
    "identity_document",
    "name",
]
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def twelve_digits_passing_check(seed: int) -> str:
    """A 12-digit number whose last digit is an Individual Number check digit."""
    rng = random.Random(seed)
    while True:
        digits = "".join(str(rng.randint(0, 9)) for _ in range(12))
        if is_individual_number(digits):
            return digits


def _set_visit(db: Engine, visit_id: str, **values: Any) -> None:
    with Session(db) as session, session.begin():
        session.execute(update(Visit).where(Visit.id == visit_id).values(**values))


def _set_state(db: Engine, customer_id: str, state: str) -> None:
    with Session(db) as session, session.begin():
        session.execute(update(Customer).where(Customer.id == customer_id).values(state=state))


def _residue(db: Engine) -> tuple[int, int, int, int]:
    return (
        count_rows(db, Customer),
        count_rows(db, CustomerKey),
        count_rows(db, ConsentEvent),
        count_rows(db, IdempotentRequest),
    )


# --- reads: steps 3 and 4 of the check order, and existence --------------------------------------


def test_refusals_do_not_reveal_whether_the_customer_exists(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales, tech, manager = (as_member(m) for m in (cast.SALES, cast.TECHNICIAN, cast.MANAGER))
    customer = register_customer(client, sales, seed=1)
    other = register_customer(client, sales, seed=2)
    closed = open_visit(client, sales, "inquiry", customer_id=customer.id)
    assert client.post(f"/visits/{closed}/close", headers=sales).status_code == 200
    expired = open_visit(client, sales, "inquiry", customer_id=customer.id)
    _set_visit(db, expired, auto_close_at=utcnow() - timedelta(minutes=1))
    other_store = open_visit(
        client, as_member(cast.SALES_OTHER_STORE), "inquiry", customer_id=customer.id
    )
    not_repair = open_visit(client, tech, "inquiry", customer_id=customer.id)
    own = open_visit(client, manager, "inquiry", customer_id=customer.id)

    cases: list[tuple[str, Headers, str]] = [
        ("role may not use purpose", purpose(sales, "audit"), "purpose-not-allowed"),
        ("admin", purpose(as_member(cast.ADMIN), "contract"), "purpose-not-allowed"),
        ("sales without visit", purpose(sales, "contract"), "visit-required"),
        (
            "sales, unknown visit",
            purpose(sales, "contract", visit=str(uuid.uuid4())),
            "visit-required",
        ),
        ("sales, closed visit", purpose(sales, "contract", visit=closed), "visit-required"),
        ("sales, auto-closed visit", purpose(sales, "contract", visit=expired), "visit-required"),
        (
            "sales, other store's visit",
            purpose(sales, "contract", visit=other_store),
            "visit-required",
        ),
        (
            "sales, other customer's visit",
            purpose(sales, "contract", visit=other.visit_id),
            "visit-required",
        ),
        (
            "sales, a reason instead of a visit",
            purpose(sales, "contract", reason=REASON),
            "visit-required",
        ),
        (
            "technician, non-repair visit",
            purpose(tech, "repair", visit=not_repair),
            "visit-required",
        ),
        (
            "manager of another store, this store's visit",
            purpose(as_member(cast.MANAGER_OTHER_STORE), "contract", visit=own),
            "visit-required",
        ),
        ("manager without visit or reason", purpose(manager, "contract"), "reason-required"),
        ("auditor without reason", purpose(as_member(cast.AUDITOR), "audit"), "reason-required"),
    ]
    unknown = str(uuid.uuid4())
    asked_ids = [(customer.id, [customer.id]), (unknown, [unknown]), ("not-a-customer-id", [])]
    for label, headers, problem in cases:
        answers = []
        for asked, logged_ids in asked_ids:
            response = client.get(f"/customers/{asked}", headers=headers)
            assert response.status_code == 403, (label, asked, response.text)
            body = response.json()
            answers.append((response.status_code, body["type"], body["title"], body["detail"]))
            event = event_of(db, response)
            assert (event.outcome, event.action, event.denial) == ("denied", "read", problem)
            assert event.customer_ids == logged_ids, (label, asked)
            assert event.fields == []
        assert answers[0][1] == f"/problems/{problem}", label
        assert answers[0] == answers[1] == answers[2], label

    # The same callers, justified, do see the customer: the refusals above were about context.
    assert (
        client.get(
            f"/customers/{customer.id}", headers=purpose(manager, "contract", visit=own)
        ).status_code
        == 200
    )


def test_a_malformed_id_is_refused_like_any_other_and_not_copied_into_the_log(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    headers = purpose(as_member(cast.SALES), "contract")
    for asked in ("x" * 400, "09012345678"):
        for response in (
            client.get(f"/customers/{asked}", headers=headers),
            client.patch(f"/customers/{asked}", json={"address": "東京都"}, headers=headers),
            client.patch(f"/contracts/{asked}", json={"status": "terminated"}, headers=headers),
        ):
            assert response.status_code == 403, response.text
            event = event_of(db, response)
            assert event.outcome == "denied"
            assert asked not in repr(vars(event.row))


def test_unknown_or_erased_customer_is_404_only_for_a_caller_who_may_look(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales, manager = as_member(cast.SALES), as_member(cast.MANAGER)
    customer = register_customer(client, sales, seed=3)
    with_reason = purpose(manager, "subject_request", reason=REASON)
    for asked in (str(uuid.uuid4()), "not-a-customer-id"):
        response = client.get(f"/customers/{asked}", headers=with_reason)
        assert response.status_code == 404
        assert response.json()["type"] == "/problems/not-found"
    _set_state(db, customer.id, "erased")
    assert client.get(f"/customers/{customer.id}", headers=with_reason).status_code == 404
    response = client.get(f"/customers/{customer.id}", headers=purpose(sales, "contract"))
    assert response.status_code == 403


def test_suspended_customer_is_readable_only_for_subject_requests(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales, manager = as_member(cast.SALES), as_member(cast.MANAGER)
    customer = register_customer(client, sales, seed=4)
    visit = open_visit(client, sales, "inquiry", customer_id=customer.id)
    _set_state(db, customer.id, "suspended")
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=visit)
    )
    assert response.status_code == 403
    assert "name" not in response.text
    event = event_of(db, response)
    assert (event.outcome, event.customer_ids) == ("denied", [customer.id])
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(manager, "support", reason=REASON)
    )
    assert response.status_code == 403
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(manager, "subject_request", reason=REASON)
    )
    assert response.status_code == 200
    assert response.json()["name"] == customer.body["name"]
    event = event_of(db, response)
    assert (event.action, event.outcome, event.review_required) == ("read", "allowed", True)
    assert event.reason == REASON


# --- registration ------------------------------------------------------------------------------


def test_register_within_a_visit(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales = as_member(cast.SALES)
    visit = open_visit(client, sales)
    body = customer_body(21)
    response = client.post("/customers", json=body, headers=purpose(sales, "contract", visit=visit))
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    view = response.json()
    assert view["fields"] == SALES_CONTRACT_GROUPS
    assert "visits" not in view and "document_number" not in view and "billing" not in view
    assert view["name"] == body["name"]
    assert view["identity_document"]["number_last4"] == body["identity_document"]["number"][-4:]
    assert view["identity_document"]["verified_store"] == "S001"
    assert client.get(f"/visits/{visit}", headers=sales).json()["customer_id"] == view["id"]
    event = event_of(db, response)
    assert (event.action, event.outcome, event.customer_ids) == ("create", "allowed", [view["id"]])
    assert event.fields == SALES_CONTRACT_GROUPS

    # Consents keep their history from the start: when, where, at which visit, how, by whom.
    with Session(db) as session:
        consents = session.scalars(
            select(ConsentEvent).where(ConsentEvent.customer_id == view["id"])
        ).all()
        store_id = session.scalar(select(Visit.store_id).where(Visit.id == visit))
    assert sorted((c.channel, c.granted) for c in consents) == [("email", False), ("sms", False)]
    for consent in consents:
        assert consent.at is not None
        assert consent.store_id == store_id
        assert consent.visit_id == visit
        assert consent.method
        assert consent.recorded_by == "sales1"

    # The customer's reads carry no-store too.
    read = client.get(f"/customers/{view['id']}", headers=purpose(sales, "contract", visit=visit))
    assert read.headers["cache-control"] == "no-store"


def test_manager_registration_shows_the_managers_contract_groups(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    manager = as_member(cast.MANAGER)
    visit = open_visit(client, manager)
    response = client.post(
        "/customers", json=customer_body(22), headers=purpose(manager, "contract", visit=visit)
    )
    assert response.status_code == 201, response.text
    assert response.json()["fields"] == sorted([*SALES_CONTRACT_GROUPS, "repairs", "visits"])
    assert [v["id"] for v in response.json()["visits"]] == [visit]


def test_registration_needs_an_open_unattached_visit_at_the_callers_store(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales, manager = as_member(cast.SALES), as_member(cast.MANAGER)
    other_store = open_visit(client, as_member(cast.SALES_OTHER_STORE))
    taken = register_customer(client, sales, seed=30).visit_id
    closed = open_visit(client, sales)
    assert client.post(f"/visits/{closed}/close", headers=sales).status_code == 200
    before = _residue(db)
    cases = [
        purpose(sales, "contract"),
        purpose(manager, "contract", reason=REASON),
        purpose(sales, "contract", visit=other_store),
        purpose(sales, "contract", visit=taken),
        purpose(sales, "contract", visit=closed),
        purpose(sales, "contract", visit=str(uuid.uuid4())),
    ]
    for headers in cases:
        response = client.post("/customers", json=customer_body(31), headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "/problems/visit-required"
        event = event_of(db, response)
        assert (event.action, event.outcome) == ("create", "denied")
    for headers in (purpose(sales, "support"), purpose(as_member(cast.TECHNICIAN), "contract")):
        response = client.post("/customers", json=customer_body(31), headers=headers)
        assert response.status_code == 403
        assert response.json()["type"] == "/problems/purpose-not-allowed"
    assert _residue(db) == before


def test_idempotent_registration(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales = as_member(cast.SALES)
    visit = open_visit(client, sales)
    headers = {**purpose(sales, "contract", visit=visit), "Idempotency-Key": "pos-01-retry-0001"}
    body = customer_body(40)
    first = client.post("/customers", json=body, headers=headers)
    assert first.status_code == 201, first.text
    after_first = _residue(db)
    again = client.post("/customers", json=body, headers=headers)
    assert again.status_code in (200, 201), again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["fields"] == first.json()["fields"]
    assert _residue(db) == after_first

    changed = client.post("/customers", json={**body, "address": "別の住所 1-1"}, headers=headers)
    assert changed.status_code == 409
    assert changed.json()["type"] == "/problems/idempotency-mismatch"
    assert "別の住所" not in changed.text
    assert _residue(db) == after_first


LICENCE_LIKE_MY_NUMBER = twelve_digits_passing_check(1)
MY_NUMBER = twelve_digits_passing_check(2)
_A, _B, _C = MY_NUMBER[:4], MY_NUMBER[4:8], MY_NUMBER[8:]


BAD_REGISTRATIONS: list[tuple[str, dict[str, Any], str | None]] = [
    ("unknown-field", {"nickname": "タロちゃん"}, "タロちゃん"),
    ("kana-hiragana", {"name_kana": "やまだ たろう"}, "やまだ たろう"),
    ("kana-latin", {"name_kana": "Yamada Taro"}, "Yamada Taro"),
    ("kana-too-long", {"name_kana": "ヤマダ" * 40}, "ヤマダヤマダ"),
    ("birth-future", {"date_of_birth": "2999-01-01"}, "2999-01-01"),
    ("birth-invalid", {"date_of_birth": "1990-02-30"}, "1990-02-30"),
    ("birth-format", {"date_of_birth": "30/01/1990"}, "30/01/1990"),
    ("postal-shape", {"postal_code": "1500-041"}, "1500-041"),
    ("postal-long", {"postal_code": "150-00412"}, "150-00412"),
    ("phone-short", {"phone": "090-1234-567"}, "090-1234-567"),
    ("phone-foreign", {"phone": "+1 415 555 2671"}, "415 555 2671"),
    ("phone-letters", {"phone": "call 0901234567"}, "0901234567"),
    ("email-no-domain", {"email": "taro.yamada@"}, "taro.yamada@"),
    ("email-space", {"email": "taro yamada@example.jp"}, "taro yamada"),
    ("name-too-long", {"name": "山" * 101}, "山山山山山山山山"),
    ("address-too-long", {"address": "東京都" + "あ" * 300}, "ああああああああ"),
    ("address-empty", {"address": ""}, None),
    ("mynumber", {"address": f"渋谷区神南1-2-3 {MY_NUMBER}"}, MY_NUMBER),
    ("mynumber-spaces", {"address": f"渋谷区神南 {_A} {_B} {_C}"}, f"{_A} {_B} {_C}"),
    ("mynumber-hyphens", {"address": f"渋谷区神南 {_A}-{_B}-{_C}"}, f"{_A}-{_B}-{_C}"),
    (
        "mynumber-full-width",
        {"address": "渋谷区神南 " + MY_NUMBER.translate(FULL_WIDTH)},
        MY_NUMBER.translate(FULL_WIDTH),
    ),
    ("mynumber-in-name", {"name": f"山田 {MY_NUMBER}"}, MY_NUMBER),
    (
        "my-number-card-with-number",
        {"identity_document": {"type": "my_number_card", "number": MY_NUMBER}},
        MY_NUMBER,
    ),
    (
        "health-insurance-with-number",
        {"identity_document": {"type": "health_insurance_card", "number": "12345678"}},
        "12345678",
    ),
    (
        "passport-shape",
        {"identity_document": {"type": "passport", "number": "A12345678"}},
        "A12345678",
    ),
    (
        "residence-card-shape",
        {"identity_document": {"type": "residence_card", "number": "AB1234567CD"}},
        "AB1234567CD",
    ),
    (
        "licence-11-digits",
        {"identity_document": {"type": "drivers_license", "number": "12345678901"}},
        "12345678901",
    ),
    ("licence-without-number", {"identity_document": {"type": "drivers_license"}}, None),
    (
        "document-type",
        {"identity_document": {"type": "library_card", "number": "X1"}},
        "library_card",
    ),
    ("consent", {"consents": {"marketing_email": "yes please"}}, "yes please"),
]


def test_bad_registration_is_422_and_leaves_nothing(
    client: TestClient,
    as_member: Callable[..., Headers],
    db: Engine,
    subtests: pytest.Subtests,
) -> None:
    sales = as_member(cast.SALES)
    visit = open_visit(client, sales)
    headers = {**purpose(sales, "contract", visit=visit), "Idempotency-Key": "bad-input-0001"}
    before = _residue(db)
    for label, overrides, echo in BAD_REGISTRATIONS:
        with subtests.test(msg=label):
            response = client.post(
                "/customers", json=customer_body(50, **overrides), headers=headers
            )
            assert response.status_code == 422, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["type"] == "/problems/validation"
            if echo is not None:
                assert echo not in response.text
            assert _residue(db) == before
            assert events_of(db, response) == []
    # The visit is still free, and the key unused, for a correct registration.
    assert client.get(f"/visits/{visit}", headers=sales).json()["customer_id"] is None
    response = client.post("/customers", json=customer_body(50), headers=headers)
    assert response.status_code == 201, response.text


def test_malformed_json_is_422(client: TestClient, as_member: Callable[..., Headers]) -> None:
    sales = as_member(cast.SALES)
    visit = open_visit(client, sales)
    response = client.post(
        "/customers",
        content=b'{"name": "\xe5\xb1\xb1\xe7\x94\xb0 \xe5\xa4\xaa\xe9\x83\x8e",',
        headers={**purpose(sales, "contract", visit=visit), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "山田" not in response.text


def test_a_licence_number_that_passes_the_my_number_check_is_accepted(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    number = LICENCE_LIKE_MY_NUMBER
    assert is_individual_number(number)
    customer = register_customer(
        client,
        as_member(cast.SALES),
        seed=60,
        identity_document={"type": "drivers_license", "number": number},
    )
    assert customer.view["identity_document"]["number_last4"] == number[-4:]
    fraud = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": cast.FRAUD.name,
            "client_secret": cast.FRAUD.secret,
        },
    ).json()["access_token"]
    response = client.get(
        f"/customers/{customer.id}",
        headers=purpose({"Authorization": f"Bearer {fraud}"}, "fraud_prevention"),
    )
    assert response.json()["document_number"] == number


KEPT_DOCUMENT_NUMBERS: list[tuple[dict[str, Any], str | None]] = [
    ({"type": "my_number_card"}, None),
    ({"type": "my_number_card", "number": None}, None),
    ({"type": "my_number_card", "number": " "}, None),
    ({"type": "health_insurance_card"}, None),
    ({"type": "passport", "number": "AB1234567"}, "AB1234567"),
    ({"type": "passport", "number": "ab1234567"}, "AB1234567"),
    ({"type": "residence_card", "number": "AB12345678CD"}, "AB12345678CD"),
    ({"type": "drivers_license", "number": "1234 5678 9012"}, "123456789012"),
]


def test_identity_documents_keep_only_what_the_law_allows(
    client: TestClient, as_member: Callable[..., Headers], db: Engine, subtests: pytest.Subtests
) -> None:
    sales = as_member(cast.SALES)
    for seed, (document, kept) in enumerate(KEPT_DOCUMENT_NUMBERS):
        with subtests.test(msg=repr(document)):
            customer = register_customer(client, sales, seed=70 + seed, identity_document=document)
            shown = customer.view["identity_document"]
            assert shown["type"] == document["type"]
            assert shown["number_last4"] == (kept[-4:] if kept else None)
            with Session(db) as session:
                stored = session.scalar(
                    select(Customer.document_number_enc).where(Customer.id == customer.id)
                )
            assert (stored is None) is (kept is None)
            if kept is not None:
                assert stored is not None and kept.encode() not in stored


# --- corrections -------------------------------------------------------------------------------


def test_correction_records_field_names_never_values(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=80)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    patch = {
        "phone": "080-2222-3333",
        "address": "東京都渋谷区宇田川町 9-9-9",
        "name": customer.body["name"],  # unchanged: not listed
        "consents": {"marketing_sms": True},
    }
    response = client.patch(f"/customers/{customer.id}", json=patch, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    view = response.json()
    assert view["phone"] == "080-2222-3333"
    assert view["address"] == patch["address"]
    assert view["consents"] == {"marketing_email": False, "marketing_sms": True}
    event = event_of(db, response)
    assert (event.action, event.outcome, event.customer_ids) == ("update", "allowed", [customer.id])
    assert event.changed_fields == ["address", "consents.marketing_sms", "phone"]
    logged = repr(vars(event.row))
    for value in ("2222", "宇田川町", customer.body["name"]):
        assert value not in logged
    with Session(db) as session:
        withdrawals = session.scalars(
            select(ConsentEvent).where(
                ConsentEvent.customer_id == customer.id, ConsentEvent.channel == "sms"
            )
        ).all()
    assert sorted(c.granted for c in withdrawals) == [False, True]

    # The new phone number finds the customer; the old one no longer does.
    def search(phone: str) -> list[str]:
        found = client.post("/customers/search", json={"phone": phone}, headers=headers)
        assert found.status_code == 200, found.text
        return [item["id"] for item in found.json()["items"]]

    assert search("08022223333") == [customer.id]
    assert customer.id not in search(customer.body["phone"])


def test_correction_is_limited_to_the_groups_of_the_purpose(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=81)
    visit = customer.visit_id
    for used, patch in (
        ("support", {"address": "東京都港区 1-1-1"}),
        ("support", {"date_of_birth": "1980-01-01"}),
        ("support", {"consents": {"marketing_email": True}}),
        ("identity_verification", {"address": "東京都港区 1-1-1"}),
        ("billing", {"name": "山田 花子"}),
    ):
        response = client.patch(
            f"/customers/{customer.id}", json=patch, headers=purpose(sales, used, visit=visit)
        )
        assert response.status_code == 403, (used, patch, response.text)
        assert response.json()["type"] == "/problems/purpose-not-allowed"
        event = event_of(db, response)
        assert (event.action, event.outcome, event.customer_ids) == (
            "update",
            "denied",
            [customer.id],
        )
    read = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=visit)
    ).json()
    assert read["address"] == customer.body["address"]
    assert read["date_of_birth"] == customer.body["date_of_birth"]
    assert read["consents"]["marketing_email"] is False
    # Within the purpose's groups the same caller may correct.
    response = client.patch(
        f"/customers/{customer.id}",
        json={"email": "new.address@example.jp"},
        headers=purpose(sales, "support", visit=visit),
    )
    assert response.status_code == 200, response.text


BAD_CORRECTIONS: list[dict[str, Any]] = [
    {},
    {"name": None},
    {"phone": "not a phone"},
    {"name_kana": "やまだ"},
    {"date_of_birth": "2999-12-31"},
    {"address": f"渋谷区 {MY_NUMBER}"},
    {"state": "active"},
    {"document_number": "123456789012"},
]


def test_bad_corrections_are_422(
    client: TestClient, as_member: Callable[..., Headers], db: Engine, subtests: pytest.Subtests
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=82)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    for patch in BAD_CORRECTIONS:
        with subtests.test(msg=repr(patch)):
            response = client.patch(f"/customers/{customer.id}", json=patch, headers=headers)
            assert response.status_code == 422, response.text
            assert MY_NUMBER not in response.text
            assert events_of(db, response) == []
    read = client.get(f"/customers/{customer.id}", headers=headers).json()
    assert {k: read[k] for k in ("name", "name_kana", "phone", "address", "date_of_birth")} == {
        k: customer.body[k] for k in ("name", "name_kana", "phone", "address", "date_of_birth")
    }
