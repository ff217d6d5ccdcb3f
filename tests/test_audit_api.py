"""The auditor's API (the log, reviews, alerts), the customer's access report, and the export:
who may use them, what they answer, and that using them is itself recorded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.audit.schemas import AccessEventOut
from app.config import Settings
from tests import cast
from tests.access_log import event_of
from tests.audit_helpers import (
    AUDIT_REASON,
    Clock,
    auditor_headers,
    run_cli,
    verify_api,
    with_clock,
)
from tests.conftest import METRICS_HEADERS, login
from tests.world import open_visit, purpose, register_customer

SPEC_EVENT_FIELDS = {
    "id", "at", "actor", "role", "store", "terminal", "purpose", "reason", "action", "resource",
    "customer_ids", "fields", "changed_fields", "result_count", "outcome", "review_required",
    "presence_method", "subject_request_id", "count", "request_id", "chain", "seq", "hash",
    "prev_hash",
}  # fmt: skip
LOOK_REASON = "電話での住所変更の問い合わせ対応"


def _manager_look(client: TestClient, customer_id: str) -> Any:
    manager = login(client, cast.MANAGER)
    response = client.get(
        f"/customers/{customer_id}", headers=purpose(manager, "support", reason=LOOK_REASON)
    )
    assert response.status_code == 200, response.text
    return response


# --- GET /access-events ------------------------------------------------------------------------


def test_only_an_auditor_with_a_reason_reads_the_log(client: TestClient, db: Engine) -> None:
    manager = login(client, cast.MANAGER)
    for headers, slug in (
        (purpose(manager, "audit", reason=AUDIT_REASON), "purpose-not-allowed"),
        (purpose(manager, "support", reason=AUDIT_REASON), "purpose-not-allowed"),
        (purpose(login(client, cast.ADMIN), "audit", reason=AUDIT_REASON), "purpose-not-allowed"),
        (auditor_headers(client, reason=None), "reason-required"),
    ):
        for path in ("/access-events", "/access-events/verify", "/alerts", "/reviews"):
            response = client.get(path, headers=headers)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["type"] == f"/problems/{slug}"
            event = event_of(db, response)
            assert (event.outcome, event.denial) == ("denied", slug)
    assert client.get("/access-events").status_code == 401
    no_purpose = login(client, cast.AUDITOR)
    assert client.get("/access-events", headers=no_purpose).status_code == 400


def test_the_log_newest_first_with_every_field_and_reading_it_is_recorded(
    client: TestClient, db: Engine
) -> None:
    sales = login(client, cast.SALES, terminal="POS-S001-01")
    customer = register_customer(client, sales, seed=11)
    headers = auditor_headers(client)
    response = client.get("/access-events", headers=headers, params={"limit": 500})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next"] is None
    items = page["items"]
    assert all(set(item) == SPEC_EVENT_FIELDS for item in items)
    times = [item["at"] for item in items]
    assert times == sorted(times, reverse=True)
    created = next(item for item in items if item["action"] == "create")
    assert created["customer_ids"] == [customer.id]
    assert created["terminal"] == "POS-S001-01" and created["store"] == "S001"
    assert "name" in created["fields"]
    read = event_of(db, response)
    assert (read.actor, read.role, read.action, read.resource, read.purpose, read.reason) == (
        cast.AUDITOR.login,
        "auditor",
        "read",
        "access-events",
        "audit",
        AUDIT_REASON,
    )
    assert client.get("/access-events", headers=headers, params={"limit": 501}).status_code == 422


def test_filters_and_cursor_pagination(client: TestClient) -> None:
    sales = login(client, cast.SALES)
    first = register_customer(client, sales, seed=21)
    register_customer(client, sales, seed=22)
    login(client, cast.SALES_OTHER_STORE)
    headers = auditor_headers(client)

    def items(**params: Any) -> list[dict[str, Any]]:
        response = client.get("/access-events", headers=headers, params=params)
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()["items"]
        return result

    assert {i["customer_ids"][0] for i in items(customer_id=first.id)} == {first.id}
    assert {i["actor"] for i in items(actor="sales2")} == {"sales2"}
    assert {i["store"] for i in items(store="S002")} == {"S002"}
    assert {i["purpose"] for i in items(purpose="contract")} == {"contract"}
    denied = client.get("/customers/" + first.id, headers=purpose(sales, "repair"))
    assert denied.status_code == 403
    assert {i["outcome"] for i in items(outcome="denied")} == {"denied"}
    everything = items(limit=500)
    middle = everything[len(everything) // 2]["at"]
    assert all(i["at"] >= middle for i in items(**{"from": middle}))
    assert all(i["at"] < middle for i in items(to=middle))

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "actor": "sales1"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/access-events", headers=headers, params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [i["id"] for i in items(actor="sales1", limit=500)]
    assert len(seen) == len(set(seen)) >= 4
    bad = client.get("/access-events", headers=headers, params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422


def test_the_api_fields_reseal_to_the_stored_hash(client: TestClient, settings: Settings) -> None:
    # The fields the API gives are the ones the hash covers (what a SIEM can check).
    customer = register_customer(client, login(client, cast.SALES), seed=5)
    items = client.get(
        "/access-events", headers=auditor_headers(client), params={"customer_id": customer.id}
    ).json()["items"]
    assert items
    for item in items:
        AccessEventOut.model_validate(item)
        assert len(item["hash"]) == 64 and len(item["prev_hash"]) == 64


# --- reviews -----------------------------------------------------------------------------------


def test_reviews_of_managers_looks_without_a_visit(client: TestClient, db: Engine) -> None:
    sales = login(client, cast.SALES)
    customers = [register_customer(client, sales, seed=s) for s in (31, 32)]
    looks = [_manager_look(client, c.id) for c in customers]
    look_events = [event_of(db, look) for look in looks]
    assert all(event.review_required for event in look_events)
    headers = auditor_headers(client)

    pending = client.get("/reviews", headers=headers).json()["items"]
    assert [item["event"]["id"] for item in pending] == [e.id for e in reversed(look_events)]
    assert all(item["review"] is None for item in pending)

    target = look_events[0]
    with db.connect() as connection:
        before = connection.execute(
            text("SELECT hash FROM access_event WHERE id = :id"), {"id": target.id}
        ).scalar_one()
    body = {"decision": "ok", "note": "電話での依頼記録と一致"}
    response = client.post(f"/reviews/{target.id}", json=body, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["decision"] == "ok"
    assert response.json()["reviewed_by"] == cast.AUDITOR.login
    recorded = event_of(db, response)
    assert (recorded.action, recorded.resource) == ("create", f"reviews/{target.id}")
    again = client.post(f"/reviews/{target.id}", json=body, headers=headers)
    assert again.status_code == 409

    ordered = client.get("/reviews", headers=headers).json()["items"]
    assert [item["review"] is None for item in ordered] == [True, False]  # pending first
    assert ordered[1]["review"]["note"] == body["note"]
    reviewed = client.get("/reviews", headers=headers, params={"pending": "false"}).json()
    assert [item["event"]["id"] for item in reviewed["items"]] == [target.id]

    # Kept beside the event, never written into it.
    with db.connect() as connection:
        after = connection.execute(
            text("SELECT hash FROM access_event WHERE id = :id"), {"id": target.id}
        ).scalar_one()
    assert after == before
    assert verify_api(client, full=True)["ok"]

    login_event = client.get(
        "/access-events", headers=headers, params={"actor": "sales1", "limit": 1}
    ).json()["items"][0]
    refused = client.post(f"/reviews/{login_event['id']}", json=body, headers=headers)
    assert refused.status_code == 404
    escalate = {"decision": "escalate", "note": "理由が不十分"}
    assert (
        client.post(f"/reviews/{look_events[1].id}", json=escalate, headers=headers).status_code
        == 201
    )
    maybe = {"decision": "maybe", "note": "x"}
    bad = client.post(f"/reviews/{look_events[1].id}", json=maybe, headers=headers)
    assert bad.status_code == 422


# --- alerts ------------------------------------------------------------------------------------


def test_resolving_an_alert(client: TestClient, db: Engine) -> None:
    with_clock(client, Clock())  # within opening hours
    customer = register_customer(client, login(client, cast.SALES), seed=41)
    _manager_look(client, customer.id)  # opens review_pending
    client.portal.call(client.app.state.runtime.drain)  # type: ignore[attr-defined,union-attr]
    headers = auditor_headers(client)
    alerts = client.get("/alerts", headers=headers, params={"rule": "review_pending"}).json()
    assert len(alerts["items"]) == 1
    alert = alerts["items"][0]
    assert set(alert) == {"id", "rule", "actor", "store", "status", "first_at", "last_at", "count"}
    assert (alert["actor"], alert["store"], alert["status"]) == ("manager1", "S001", "open")
    response = client.post(
        f"/alerts/{alert['id']}/resolve", json={"note": "店長に確認済み"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "resolved"
    event = event_of(db, response)
    assert (event.action, event.resource, event.changed_fields) == (
        "update",
        f"alerts/{alert['id']}",
        ["note", "status"],
    )
    again = client.post(f"/alerts/{alert['id']}/resolve", json={"note": "x"}, headers=headers)
    assert again.status_code == 409
    assert client.get("/alerts", headers=headers, params={"status": "open"}).json()["items"] == []
    resolved = client.get("/alerts", headers=headers, params={"status": "resolved"}).json()
    assert [a["id"] for a in resolved["items"]] == [alert["id"]]
    assert client.get("/alerts", headers=headers, params={"store": "S002"}).json()["items"] == []
    missing = client.post(
        "/alerts/00000000-0000-4000-8000-000000000000/resolve", json={"note": "x"}, headers=headers
    )
    assert missing.status_code == 404
    no_note = client.post(f"/alerts/{alert['id']}/resolve", json={}, headers=headers)
    assert no_note.status_code == 422


def test_open_alerts_in_the_metrics(client: TestClient) -> None:
    with_clock(client, Clock())
    customer = register_customer(client, login(client, cast.SALES), seed=42)
    _manager_look(client, customer.id)
    client.portal.call(client.app.state.runtime.drain)  # type: ignore[attr-defined,union-attr]
    metrics = client.get("/metrics", headers=METRICS_HEADERS).text
    assert 'shopvault_open_alerts{rule="review_pending"} 1.0' in metrics
    assert 'shopvault_open_alerts{rule="bulk_read"} 0.0' in metrics


# --- the customer's access report --------------------------------------------------------------


def _report(client: TestClient, customer_id: str, **params: str) -> Any:
    manager = login(client, cast.MANAGER)
    return client.get(
        f"/customers/{customer_id}/access-report",
        headers=purpose(manager, "subject_request", reason="お客様からの開示請求への対応"),
        params=params,
    )


def test_the_access_report_names_no_employee(client: TestClient, db: Engine) -> None:
    sales = login(client, cast.SALES, terminal="POS-S001-07")
    customer = register_customer(client, sales, seed=51)
    client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=customer.visit_id)
    )
    other = login(client, cast.SALES_OTHER_STORE)
    refused = client.get(f"/customers/{customer.id}", headers=purpose(other, "contract"))
    assert refused.status_code == 403
    _manager_look(client, customer.id)

    response = _report(client, customer.id)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["customer_id"] == customer.id
    assert report["store"] == {"code": "S001", "name": "渋谷店"}
    items = report["items"]
    assert [(i["store"], i["role"], i["purpose"], i["outcome"]) for i in items] == [
        ("S001", "sales", "contract", "allowed"),
        ("S001", "sales", "contract", "allowed"),
        ("S002", "sales", "contract", "denied"),
        ("S001", "manager", "support", "allowed"),
    ]
    assert all(
        set(item) == {"at", "store", "role", "purpose", "fields", "outcome"} for item in items
    )
    assert "name" in items[0]["fields"]
    event = event_of(db, response)
    assert event.resource == f"customers/{customer.id}/access-report"
    assert event.customer_ids == [customer.id] and event.review_required

    html = _report(client, customer.id, format="html")
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    page = html.text
    for heading in ("アクセス記録のご報告", "発行店舗", "対象期間", "日時", "担当区分", "利用目的"):
        assert heading in page
    assert "渋谷店" in page and "新宿店" in page and "販売員" in page and "拒否" in page
    staff_names = {m.login for m in cast.STAFF} | {f"テスト {m.login}" for m in cast.STAFF}
    for text_ in (response.text, page):
        for name in staff_names:
            assert name not in text_
        assert "POS-S001-07" not in text_
    assert customer.body["name"] not in page


def test_the_access_report_covers_a_period(client: TestClient) -> None:
    customer = register_customer(client, login(client, cast.SALES), seed=52)
    everything = _report(client, customer.id).json()["items"]
    assert everything
    later = _report(client, customer.id, **{"from": "2099-01-01T00:00:00+09:00"}).json()
    assert later["items"] == [] and later["from"].startswith("2099-01-01")
    html = _report(client, customer.id, **{"from": "2026-01-01T00:00:00+09:00", "format": "html"})
    assert "2026年01月01日 〜" in html.text


def test_only_a_manager_for_a_subject_request_gets_the_report(client: TestClient) -> None:
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=53)
    for headers in (
        purpose(sales, "subject_request", visit=customer.visit_id),
        purpose(login(client, cast.MANAGER), "support", reason=LOOK_REASON),
        purpose(login(client, cast.MANAGER), "subject_request"),
        auditor_headers(client),
    ):
        response = client.get(f"/customers/{customer.id}/access-report", headers=headers)
        assert response.status_code == 403, response.text
    unknown = _report(client, "00000000-0000-4000-8000-000000000000")
    assert unknown.status_code == 404


# --- shopvault audit export ----------------------------------------------------------------------


def test_export_as_json_lines_resumable_and_recorded(
    client: TestClient,
    settings: Settings,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sales = login(client, cast.SALES)
    open_visit(client, sales)
    code, out, err = run_cli(settings, monkeypatch, capsys, "audit", "export", "--settle", "0")
    assert code == 0, err
    first = [json.loads(line) for line in out.splitlines()]
    assert len(first) == 1 and all(set(item) == SPEC_EVENT_FIELDS for item in first)
    assert [item["at"] for item in first] == sorted(item["at"] for item in first)
    cursor = err.strip().rsplit(" ", 1)[-1]
    register_customer(client, sales, seed=61)
    code, out, err = run_cli(
        settings, monkeypatch, capsys, "audit", "export", "--settle", "0", "--since", cursor
    )
    assert code == 0, err
    second = [json.loads(line) for line in out.splitlines()]
    # The first export's own event, then the new ones; nothing twice.
    assert second[0]["actor"] == "cli" and second[0]["action"] == "export"
    assert {i["id"] for i in first}.isdisjoint(i["id"] for i in second)
    assert [i["action"] for i in second[1:]] == ["create"]
    code, out, _ = run_cli(settings, monkeypatch, capsys, "audit", "export")
    assert out == ""  # nothing older than five minutes yet
    code, _, err = run_cli(settings, monkeypatch, capsys, "audit", "export", "--since", "x")
    assert code == 1


def test_times_without_an_offset_are_refused(client: TestClient) -> None:
    headers = auditor_headers(client)
    response = client.get("/access-events", headers=headers, params={"from": "2026-12-01T10:00"})
    assert response.status_code == 422
    customer = register_customer(client, login(client, cast.SALES), seed=54)
    assert _report(client, customer.id, to="2026-12-01T10:00:00").status_code == 422


def test_times_with_no_utc_equivalent_are_refused(client: TestClient) -> None:
    """Found by the fuzz: a year-1 time east of UTC has no UTC equivalent (it was a 503)."""
    headers = auditor_headers(client)
    too_early = "0001-01-01T00:00:01+02:01"
    response = client.get("/access-events", headers=headers, params={"to": too_early})
    assert response.status_code == 422, response.text
    customer = register_customer(client, login(client, cast.SALES), seed=55)
    assert _report(client, customer.id, to=too_early).status_code == 422
    assert _report(client, customer.id, **{"from": "0001-01-01T00:02:01Z"}).status_code == 200
