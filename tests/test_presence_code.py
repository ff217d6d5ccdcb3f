"""Presence codes by SMS: ``POST /customers/{id}/presence-code`` and ``consume_presence_code``
(SPEC: proof of presence, ``sms_code``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.messages.delivery import FileMail, FileSms
from app.messages.outbox import Worker
from app.messages.presence import consume_presence_code
from app.models import Message, PresenceCode
from app.runtime import Runtime
from tests import cast
from tests.access_log import count_rows, event_of
from tests.conftest import login_client
from tests.messaging import clock_at, in_runtime, message, send, set_customer, tokyo, with_purpose
from tests.world import Registered, register_customer

Headers = dict[str, str]
AsMember = Callable[..., Headers]
UNKNOWN = "7d1f0e5c-0000-4000-8000-000000000000"


@pytest.fixture
def customer(client: TestClient, as_member: AsMember) -> Registered:
    return register_customer(client, as_member(cast.SALES), seed=51)


def request_code(client: TestClient, headers: Headers, customer_id: str) -> dict[str, object]:
    response = client.post(f"/customers/{customer_id}/presence-code", headers=headers)
    assert response.status_code == 202, response.text
    return {"body": response.json(), "response": response}


def delivered_code(settings: Settings, tmp_path: Path, now: datetime) -> tuple[str, str]:
    """Run the worker with file delivery; the (number, code) of the one SMS it wrote."""

    async def work(runtime: Runtime) -> int:
        worker = Worker(
            runtime,
            mail=FileMail(tmp_path / "mail", None),
            sms=FileSms(tmp_path / "sms", None),
        )
        return await worker.run_once(now)

    assert in_runtime(settings, work) == 1
    (written,) = (tmp_path / "sms").iterdir()
    payload = json.loads(written.read_text(encoding="utf-8"))
    code = payload["body"].split("認証コード：", 1)[1][:6]
    return payload["to"], code


def consume(settings: Settings, customer_id: str, code: str, now: datetime) -> bool:
    async def work(runtime: Runtime) -> bool:
        async with runtime.sessions() as session, session.begin():
            return await consume_presence_code(
                session, customer_id, code, now, index_key=runtime.keys.index
            )

    return in_runtime(settings, work)


def test_a_code_is_sent_by_sms_and_proves_presence_once(
    client: TestClient,
    as_member: AsMember,
    settings: Settings,
    db: Engine,
    customer: Registered,
    tmp_path: Path,
) -> None:
    night = tokyo(0, 23)  # at any hour
    with clock_at(client, night):
        result = request_code(client, with_purpose(as_member(cast.SALES), "support"), customer.id)
    assert result["body"] == {"status": "accepted", "expires_in": 300}
    response = result["response"]
    event = event_of(db, response)  # type: ignore[arg-type]
    assert (event.action, event.outcome, event.purpose) == ("message", "allowed", "support")
    assert (event.fields, event.customer_ids) == (["contact"], [customer.id])

    (sms,) = [m for m in _all_messages(db) if m.kind == "presence_code"]
    assert (sms.status, sms.channel, sms.urgent) == ("queued", "sms", False)
    to, code = delivered_code(settings, tmp_path, night + timedelta(seconds=5))
    assert to == "+81" + customer.body["phone"].replace("-", "")[1:]
    with Session(db) as session:
        stored = session.scalars(select(PresenceCode)).one()
    assert code not in stored.code_hash and len(stored.code_hash) == 64
    assert message(db, sms.id).body_enc is None  # the code is not kept once delivered

    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert consume(settings, customer.id, wrong, night + timedelta(minutes=1)) is False
    assert consume(settings, UNKNOWN, code, night + timedelta(minutes=1)) is False
    assert consume(settings, customer.id, code, night + timedelta(minutes=1)) is True
    assert consume(settings, customer.id, code, night + timedelta(minutes=2)) is False  # once


def test_a_code_expires_after_five_minutes(
    client: TestClient,
    as_member: AsMember,
    settings: Settings,
    customer: Registered,
    tmp_path: Path,
) -> None:
    now = tokyo(0, 10)
    with clock_at(client, now):
        request_code(client, with_purpose(as_member(cast.TECHNICIAN), "support"), customer.id)
    _, code = delivered_code(settings, tmp_path, now)
    assert consume(settings, customer.id, code, now + timedelta(minutes=5, seconds=1)) is False
    assert consume(settings, customer.id, code, now + timedelta(minutes=4, seconds=59)) is True


def test_a_code_the_worker_gets_to_too_late_is_not_sent(
    client: TestClient,
    as_member: AsMember,
    settings: Settings,
    db: Engine,
    customer: Registered,
    tmp_path: Path,
) -> None:
    now = tokyo(0, 10)
    with clock_at(client, now):
        request_code(client, with_purpose(as_member(cast.MANAGER), "support"), customer.id)

    async def work(runtime: Runtime) -> int:
        worker = Worker(runtime, mail=FileMail(tmp_path, None), sms=FileSms(tmp_path / "sms", None))
        return await worker.run_once(now + timedelta(minutes=6))

    assert in_runtime(settings, work) == 1
    (sms,) = _all_messages(db)
    assert (sms.status, sms.failure_reason, sms.body_enc) == ("failed", "code_expired", None)
    assert not (tmp_path / "sms").exists()


def test_the_same_answer_whether_or_not_the_customer_can_get_a_code(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    headers = with_purpose(as_member(cast.SALES), "support")
    suspended = register_customer(client, as_member(cast.SALES), seed=52)
    set_customer(db, suspended.id, state="suspended")
    answers = [
        request_code(client, headers, target)
        for target in (customer.id, UNKNOWN, "not-a-customer-id", suspended.id)
    ]
    assert len({json.dumps(a["body"]) for a in answers}) == 1
    assert count_rows(db, PresenceCode) == 1
    unknown_event = event_of(db, answers[1]["response"])  # type: ignore[arg-type]
    assert (unknown_event.fields, unknown_event.customer_ids) == ([], [UNKNOWN])
    malformed_event = event_of(db, answers[2]["response"])  # type: ignore[arg-type]
    assert malformed_event.resource == "customers/(malformed-id)/presence-code"


def test_only_store_staff_with_purpose_support(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    path = f"/customers/{customer.id}/presence-code"
    refused = [
        with_purpose(as_member(cast.SALES), "contract", visit=customer.visit_id),
        with_purpose(login_client(client, cast.BILLING), "billing"),
        with_purpose(as_member(cast.AUDITOR), "audit", reason="苦情の調査のための確認です"),
        with_purpose(as_member(cast.ADMIN), "support"),
    ]
    for headers in refused:
        response = client.post(path, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "/problems/purpose-not-allowed"
        assert event_of(db, response).outcome == "denied"
    assert client.post(path).status_code == 401
    assert client.post(path, headers=as_member(cast.SALES)).status_code == 400
    assert count_rows(db, Message) == 0


def test_three_codes_per_customer_and_ten_per_caller_an_hour(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    sales = with_purpose(as_member(cast.SALES), "support")
    for _ in range(3):
        request_code(client, sales, customer.id)
    refused = client.post(f"/customers/{customer.id}/presence-code", headers=sales)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    event = event_of(db, refused)
    assert (event.action, event.outcome, event.denial) == ("message", "denied", "rate-limited")
    # Per customer, whoever asks.
    manager = with_purpose(as_member(cast.MANAGER), "support")
    assert (
        client.post(f"/customers/{customer.id}/presence-code", headers=manager).status_code == 429
    )

    # Per caller, across customers (existing or not): seven more, then no more.
    technician = with_purpose(as_member(cast.TECHNICIAN), "support")
    for n in range(10):
        request_code(client, technician, f"7d1f0e5c-0000-4000-8000-{n:012d}")
    over = client.post(f"/customers/{UNKNOWN}/presence-code", headers=technician)
    assert over.status_code == 429
    assert count_rows(db, PresenceCode) == 3


def test_codes_are_outside_the_daily_cap(
    client: TestClient, as_member: AsMember, db: Engine, customer: Registered
) -> None:
    sales = as_member(cast.SALES)
    with clock_at(client, tokyo(0, 10)):
        for _ in range(2):
            request_code(client, with_purpose(sales, "support"), customer.id)
        headers = with_purpose(sales, "support", visit=customer.visit_id)
        for _ in range(3):  # the default cap, untouched by the codes
            assert send(client, headers, customer.id).status_code == 202
        assert send(client, headers, customer.id).status_code == 429
        request_code(client, with_purpose(sales, "support"), customer.id)


def _all_messages(db: Engine) -> list[Message]:
    with Session(db) as session:
        rows = list(session.scalars(select(Message)).all())
        for row in rows:
            session.expunge(row)
        return rows
