"""Customers' requests (APPI): the register, and an open request as the justification of a
manager's subject_request access — only for what its kind covers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine, update

from app.models import SubjectRequest
from app.retention.service import today_in_japan
from tests import cast
from tests.access_log import count_rows, event_of
from tests.world import open_visit, purpose, register_customer

Headers = dict[str, str]
REASON = "郵送による開示請求への対応のため"
BODY = {"kind": "disclosure", "channel": "store", "identity_check": "pin"}


def _register(
    client: TestClient, manager: Headers, customer_id: str, kind: str = "disclosure"
) -> str:
    response = client.post(
        f"/customers/{customer_id}/subject-requests",
        json={**BODY, "kind": kind},
        headers=purpose(manager, "subject_request", reason=REASON),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _with_request(manager: Headers, request_id: str) -> Headers:
    return {**purpose(manager, "subject_request"), "X-Subject-Request-Id": request_id}


def test_a_request_registered_with_the_customer_at_a_visit(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = register_customer(client, as_member(cast.SALES), seed=201)
    visit = open_visit(client, manager, "inquiry", customer_id=customer.id)
    response = client.post(
        f"/customers/{customer.id}/subject-requests",
        json=BODY,
        headers=purpose(manager, "subject_request", visit=visit),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["kind"], body["status"], body["store"], body["review_required"]) == (
        "disclosure",
        "open",
        "S001",
        False,
    )
    assert date.fromisoformat(body["due_on"]) == today_in_japan() + timedelta(days=14)
    assert body["overdue"] is False and body["outcome"] is None
    event = event_of(db, response)
    assert (event.action, event.resource, event.customer_ids, event.fields) == (
        "create",
        f"subject-requests/{body['id']}",
        [customer.id],
        [],
    )
    assert event.review_required is False


def test_a_request_on_a_reason_alone_is_reviewed(
    client: TestClient, as_member: Callable[..., Headers], db: Engine, make_settings: Callable
) -> None:
    manager = as_member(cast.MANAGER)
    customer = register_customer(client, as_member(cast.SALES), seed=202)
    response = client.post(
        f"/customers/{customer.id}/subject-requests",
        json={**BODY, "channel": "mail", "identity_check": "mail_certificate"},
        headers=purpose(manager, "subject_request", reason=REASON),
    )
    assert response.status_code == 201, response.text
    assert response.json()["review_required"] is True
    assert event_of(db, response).review_required is True


def test_bad_requests_change_nothing(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager, sales = as_member(cast.MANAGER), as_member(cast.SALES)
    customer = register_customer(client, sales, seed=203)
    path = f"/customers/{customer.id}/subject-requests"
    with_reason = purpose(manager, "subject_request", reason=REASON)
    for body in ({**BODY, "kind": "everything"}, {**BODY, "channel": "fax"}, {"kind": "deletion"}):
        assert client.post(path, json=body, headers=with_reason).status_code == 422
    short = purpose(manager, "subject_request", reason="短い理由")
    assert client.post(path, json=BODY, headers=short).status_code == 400
    refused = client.post(path, json=BODY, headers=purpose(sales, "subject_request"))
    assert refused.status_code == 403
    assert event_of(db, refused).outcome == "denied"
    unknown = client.post(
        f"/customers/{uuid.uuid4()}/subject-requests", json=BODY, headers=with_reason
    )
    assert unknown.status_code == 404
    assert count_rows(db, SubjectRequest) == 0


def test_the_register_by_store_for_managers_and_all_for_auditors(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager, other = as_member(cast.MANAGER), as_member(cast.MANAGER_OTHER_STORE)
    first = register_customer(client, as_member(cast.SALES), seed=204)
    second = register_customer(client, as_member(cast.SALES_OTHER_STORE), seed=205)
    mine = _register(client, manager, first.id)
    theirs = _register(client, other, second.id, kind="access_log")
    with db.begin() as connection:
        connection.execute(
            update(SubjectRequest)
            .where(SubjectRequest.id == theirs)
            .values(due_on=today_in_japan() - timedelta(days=1))
        )

    def listed(headers: Headers, query: str = "") -> list[str]:
        response = client.get(f"/subject-requests{query}", headers=headers)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    response = client.get(
        "/subject-requests?open=true", headers=purpose(manager, "subject_request")
    )
    assert [i["id"] for i in response.json()["items"]] == [mine]
    event = event_of(db, response)
    assert (event.action, event.resource, event.customer_ids) == (
        "read",
        "subject-requests",
        [first.id],
    )
    assert listed(purpose(other, "subject_request"), "?overdue=true") == [theirs]
    assert listed(purpose(manager, "subject_request"), "?overdue=true") == []
    auditor = purpose(as_member(cast.AUDITOR), "audit", reason="定期監査のための確認")
    assert set(listed(auditor)) == {mine, theirs}
    sales = client.get("/subject-requests", headers=purpose(as_member(cast.SALES), "support"))
    assert sales.status_code == 403


def test_closing_a_request(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager, other = as_member(cast.MANAGER), as_member(cast.MANAGER_OTHER_STORE)
    customer = register_customer(client, as_member(cast.SALES), seed=206)
    request_id = _register(client, manager, customer.id)
    path = f"/subject-requests/{request_id}/close"
    outcome = {"outcome": "fulfilled"}
    assert (
        client.post(path, json=outcome, headers=purpose(other, "subject_request")).status_code
        == 404
    )
    assert (
        client.post(
            path, json={"outcome": "maybe"}, headers=purpose(manager, "subject_request")
        ).status_code
        == 422
    )
    response = client.post(path, json=outcome, headers=purpose(manager, "subject_request"))
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["outcome"]) == ("closed", "fulfilled")
    event = event_of(db, response)
    assert (event.action, event.subject_request_id, event.customer_ids) == (
        "update",
        request_id,
        [customer.id],
    )
    again = client.post(path, json=outcome, headers=purpose(manager, "subject_request"))
    assert again.status_code == 409
    # A closed request justifies nothing any more.
    read = client.get(f"/customers/{customer.id}", headers=_with_request(manager, request_id))
    assert read.status_code == 403
    assert read.json()["type"] == "/problems/subject-request-required"


def test_an_open_request_justifies_only_what_its_kind_covers(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager = as_member(cast.MANAGER)
    customer = register_customer(client, as_member(cast.SALES), seed=207)
    disclosure = _register(client, manager, customer.id, "disclosure")
    correction = _register(client, manager, customer.id, "correction")
    access_log = _register(client, manager, customer.id, "access_log")

    read = client.get(f"/customers/{customer.id}", headers=_with_request(manager, disclosure))
    assert read.status_code == 200, read.text
    assert read.json()["name"] == customer.body["name"]
    event = event_of(db, read)
    assert (event.subject_request_id, event.review_required, event.reason) == (
        disclosure,
        False,
        None,
    )

    patch = {"address": "東京都渋谷区神南1-2-3"}
    refused = client.patch(
        f"/customers/{customer.id}", json=patch, headers=_with_request(manager, disclosure)
    )
    assert refused.status_code == 403
    assert refused.json()["type"] == "/problems/subject-request-required"
    event = event_of(db, refused)
    assert (event.outcome, event.subject_request_id, event.customer_ids) == (
        "denied",
        disclosure,
        [customer.id],
    )
    corrected = client.patch(
        f"/customers/{customer.id}", json=patch, headers=_with_request(manager, correction)
    )
    assert corrected.status_code == 200, corrected.text
    assert event_of(db, corrected).subject_request_id == correction

    report = f"/customers/{customer.id}/access-report"
    assert client.get(report, headers=_with_request(manager, disclosure)).status_code == 403
    allowed = client.get(report, headers=_with_request(manager, access_log))
    assert allowed.status_code == 200, allowed.text
    assert event_of(db, allowed).subject_request_id == access_log


def test_a_request_justifies_only_its_customer_at_its_store(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    manager, other = as_member(cast.MANAGER), as_member(cast.MANAGER_OTHER_STORE)
    customer = register_customer(client, as_member(cast.SALES), seed=208)
    someone_else = register_customer(client, as_member(cast.SALES), seed=209)
    request_id = _register(client, manager, customer.id)
    for headers, asked in (
        (_with_request(manager, request_id), someone_else.id),
        (_with_request(other, request_id), customer.id),
        (_with_request(manager, str(uuid.uuid4())), customer.id),
        (_with_request(manager, request_id), str(uuid.uuid4())),  # unknown customer: still 403
    ):
        response = client.get(f"/customers/{asked}", headers=headers)
        assert response.status_code == 403, response.text
        assert event_of(db, response).outcome == "denied"
    malformed = {**purpose(manager, "subject_request"), "X-Subject-Request-Id": "not-an-id"}
    assert client.get(f"/customers/{customer.id}", headers=malformed).status_code == 400
    # Only a manager's subject_request: for another purpose the header justifies nothing.
    support = {**purpose(manager, "support"), "X-Subject-Request-Id": request_id}
    response = client.get(f"/customers/{customer.id}", headers=support)
    assert response.status_code == 403
    assert response.json()["type"] == "/problems/reason-required"
