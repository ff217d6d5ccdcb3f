"""Each alert rule fires in a scenario built to trip it, and stays quiet otherwise.

Time is the test's (a clock given to the app): events are stamped with it, and the rules read
time only from the events. Thresholds are settings; most tests lower them to keep the scenarios
short. Events that other features write (failed proofs of presence, approvals) are appended
through the real audit log with the fields those features record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.audit.alerts import (
    ESTIMATE_TTL_SECONDS,
    FULL_COUNT_SECONDS,
    AlertRule,
    Estimates,
    RuleName,
    alert_rules,
    window_start,
)
from app.audit.events import Action, Actor, EventDraft, Outcome
from app.config import Settings
from app.main import create_app
from tests import cast
from tests.audit_helpers import Clock, auditor_headers, drain, with_clock
from tests.conftest import login
from tests.world import purpose, register_customer

REASON = "電話での住所変更の問い合わせ対応"
MANAGER = Actor(name="manager1", id=None, role="manager", store="S001", terminal=None)
SALES = Actor(name="sales1", id=None, role="sales", store="S001", terminal=None)
ADMIN = Actor(name="admin", id=None, role="admin", store=None, terminal=None)


@pytest.fixture
def alerting(make_settings: Callable[..., Settings]) -> Callable[..., TestClient]:
    """An app with these settings and a clock at 12:00 in Tokyo (within opening hours)."""
    clients: list[Any] = []

    def start(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)))
        client.__enter__()
        clients.append(client)
        client.clock = Clock()  # type: ignore[attr-defined]
        with_clock(client, client.clock)  # type: ignore[attr-defined]
        return client

    yield start  # type: ignore[misc]
    for client in clients:
        client.__exit__(None, None, None)


def _alerts(client: TestClient, rule: RuleName | None = None) -> list[dict[str, Any]]:
    drain(client)
    params = {"rule": rule.value} if rule else {}
    response = client.get("/alerts", headers=auditor_headers(client), params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _append(client: TestClient, *drafts: EventDraft) -> None:
    """Events as other features record them, through the app's own audit log."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]

    async def append() -> None:
        async with runtime.sessions() as session:
            await runtime.audit_log.commit(
                session, drafts, request_id="test-append", at=runtime.audit_log.now()
            )

    client.portal.call(append)  # type: ignore[union-attr]


def _customers(client: TestClient, count: int) -> list[str]:
    sales = login(client, cast.SALES)
    return [register_customer(client, sales, seed=100 + n).id for n in range(count)]


def _manager_reads(client: TestClient, customer_ids: list[str]) -> None:
    manager = login(client, cast.MANAGER)
    for customer_id in customer_ids:
        response = client.get(
            f"/customers/{customer_id}", headers=purpose(manager, "support", reason=REASON)
        )
        assert response.status_code == 200, response.text


def test_the_default_thresholds_are_the_specs() -> None:
    rules = {(r.name, r.scope, r.threshold, r.period) for r in alert_rules(Settings())}
    minutes = timedelta(minutes=1)
    assert (RuleName.BULK_READ, "actor", 20, 10 * minutes) in rules
    assert (RuleName.DENIED_BURST, "actor", 5, 10 * minutes) in rules
    assert (RuleName.SEARCH_MISSES, "actor", 10, 10 * minutes) in rules
    assert (RuleName.PRESENCE_FAILURES, "actor", 10, 30 * minutes) in rules
    assert (RuleName.PRESENCE_FAILURES, "customer", 4, 30 * minutes) in rules  # reaching 5
    assert {r.name for r in alert_rules(Settings())} == set(RuleName)


# --- bulk_read -----------------------------------------------------------------------------------


def test_bulk_read_fires_above_the_threshold_and_grows(alerting: Callable[..., TestClient]) -> None:
    client = alerting(alert_bulk_read="3/10minutes")
    customers = _customers(client, 5)
    _manager_reads(client, customers[:3])
    assert _alerts(client, RuleName.BULK_READ) == []  # three is not more than three
    _manager_reads(client, customers[3:4])
    (alert,) = _alerts(client, RuleName.BULK_READ)
    assert (alert["actor"], alert["store"], alert["status"], alert["count"]) == (
        "manager1",
        "S001",
        "open",
        4,
    )
    _manager_reads(client, customers[4:] + customers[:1])
    (grown,) = _alerts(client, RuleName.BULK_READ)
    assert grown["id"] == alert["id"] and grown["count"] == 6
    assert grown["last_at"] > alert["last_at"] and grown["first_at"] == alert["first_at"]


def test_bulk_read_counts_distinct_customers_within_the_period(
    alerting: Callable[..., TestClient],
) -> None:
    client = alerting(alert_bulk_read="3/10minutes")
    customers = _customers(client, 4)
    _manager_reads(client, customers[:2] * 3)  # six reads, two customers
    client.clock.advance(minutes=11)  # type: ignore[attr-defined]
    _manager_reads(client, customers[2:])
    assert _alerts(client, RuleName.BULK_READ) == []


def test_a_bound_taken_before_is_brought_up_to_date_with_every_process_s_events(
    alerting: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a caller's count is known, a later look-up counts only the events since (less the
    commit lag), not the whole period again; those of other processes included."""
    from app.audit import alerts, auditor_repository

    calls: list[tuple[datetime, datetime]] = []
    measure = auditor_repository.measure

    async def observed(session: Any, *, rule: AlertRule, **kwargs: Any) -> dict[str, int]:
        if rule.name is RuleName.BULK_READ:
            calls.append((kwargs["since"], kwargs["until"]))
        return await measure(session, rule=rule, **kwargs)

    monkeypatch.setattr(auditor_repository, "measure", observed)
    first = alerting(alert_bulk_read="3/10minutes")
    second = alerting(alert_bulk_read="3/10minutes")
    with_clock(second, first.clock)  # type: ignore[attr-defined]
    customers = _customers(first, 4)
    period = timedelta(minutes=10)

    _manager_reads(first, customers[:1])  # first process: one customer, counted exactly
    drain(first)
    (exact,) = calls
    assert exact[1] - exact[0] == period
    _manager_reads(second, customers[1:3])  # the other process: its own exact count, 3
    assert _alerts(second, RuleName.BULK_READ) == []
    calls.clear()

    now = [time.monotonic() + alerts.ESTIMATE_TTL_SECONDS + 1]  # the first's bound is stale
    monitor = first.app.state.runtime.alerts  # type: ignore[attr-defined]
    monkeypatch.setattr(monitor.estimates, "_monotonic", lambda: now[0])
    _manager_reads(first, customers[3:])
    (alert,) = _alerts(first, RuleName.BULK_READ)  # 1 + the other's 2 + 1 > 3
    assert alert["count"] == 4
    since = calls[0][0]
    assert since == exact[1] - alerts.COMMIT_LAG  # the events since the bound only
    # Above the threshold that bound proves nothing: the period is counted exactly.
    assert [end - start for start, end in calls[1:]] == [period]


# --- off_hours -----------------------------------------------------------------------------------


def test_off_hours_by_the_stores_opening_hours_in_tokyo(
    alerting: Callable[..., TestClient],
) -> None:
    client = alerting()
    customers = _customers(client, 1)  # at 12:00: quiet
    assert _alerts(client, RuleName.OFF_HOURS) == []
    client.clock.now = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)  # type: ignore[attr-defined]
    manager = login(client, cast.MANAGER)  # 21:30 in Tokyo; a login alone is not an access
    assert _alerts(client, RuleName.OFF_HOURS) == []
    _manager_reads(client, customers)
    (alert,) = _alerts(client, RuleName.OFF_HOURS)
    assert (alert["actor"], alert["store"]) == ("manager1", "S001")
    client.clock.now = datetime(2026, 12, 2, 0, 59, tzinfo=UTC)  # type: ignore[attr-defined]
    assert manager  # 09:59 in Tokyo, the next day's window
    _manager_reads(client, customers)
    assert len(_alerts(client, RuleName.OFF_HOURS)) == 2
    client.clock.now = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)  # type: ignore[attr-defined]
    _manager_reads(client, customers)  # 10:00: open
    assert len(_alerts(client, RuleName.OFF_HOURS)) == 2


def test_a_batch_of_reads_after_hours_grows_its_alert_once_per_window(
    alerting: Callable[..., TestClient],
) -> None:
    """A busy shop after closing: the batch's events make each (actor, window) alert grow by
    their number in one statement, not one statement per read."""
    client = alerting()
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    late = datetime(2026, 12, 1, 14, 50, tzinfo=UTC)  # 23:50 in Tokyo
    times = [late, late + timedelta(minutes=5), late + timedelta(minutes=15)]  # 00:05: next day

    def row(at: datetime) -> dict[str, Any]:
        return {
            "at": at,
            "actor": "manager1",
            "role": "manager",
            "store": "S001",
            "action": "read",
            "outcome": "allowed",
            "customer_ids": ["c1"],
        }

    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("UPDATE AUDIT_ALERT", "INSERT INTO AUDIT_ALERT")):
            statements.append(statement)

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", count)
    try:
        client.portal.call(  # type: ignore[union-attr]
            lambda: _on_append(runtime, [row(at) for at in times])
        )
        drain(client)
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", count)
    alerts = sorted(_alerts(client, RuleName.OFF_HOURS), key=lambda a: a["first_at"])
    assert [(a["count"], a["first_at"], a["last_at"]) for a in alerts] == [
        (2, _iso(times[0]), _iso(times[1])),
        (1, _iso(times[2]), _iso(times[2])),
    ]
    # One attempt to grow per alert; each found nothing to grow and opened instead.
    assert len(statements) == 4, statements


async def _on_append(runtime: Any, rows: list[dict[str, Any]]) -> None:
    runtime.alerts.on_append(rows)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- denied_burst --------------------------------------------------------------------------------


def test_denied_burst(alerting: Callable[..., TestClient]) -> None:
    client = alerting(alert_denied_burst="2/10minutes")
    (customer,) = _customers(client, 1)
    sales = login(client, cast.SALES)
    for _ in range(2):
        assert (
            client.get(f"/customers/{customer}", headers=purpose(sales, "repair")).status_code
            == 403
        )
    assert _alerts(client, RuleName.DENIED_BURST) == []
    assert client.get(f"/customers/{customer}", headers=purpose(sales, "repair")).status_code == 403
    (alert,) = _alerts(client, RuleName.DENIED_BURST)
    assert (alert["actor"], alert["count"]) == ("sales1", 3)


def test_a_rate_limit_summary_counts_as_the_refusals_it_stands_for(
    alerting: Callable[..., TestClient],
) -> None:
    client = alerting(alert_denied_burst="5/10minutes")
    summary = EventDraft(
        actor=SALES,
        action=Action.SEARCH,
        resource="customers/search",
        outcome=Outcome.DENIED,
        denial="rate-limited",
        count=4,
    )
    _append(client, summary)
    assert _alerts(client, RuleName.DENIED_BURST) == []
    _append(client, summary)
    (alert,) = _alerts(client, RuleName.DENIED_BURST)
    assert alert["count"] == 8


# --- search_misses -------------------------------------------------------------------------------


def test_search_misses(alerting: Callable[..., TestClient]) -> None:
    client = alerting(alert_search_misses="2/10minutes")
    sales = login(client, cast.SALES)
    registered = register_customer(client, sales, seed=7)
    headers = purpose(sales, "contract")

    def search(phone: str) -> None:
        response = client.post("/customers/search", json={"phone": phone}, headers=headers)
        assert response.status_code == 200, response.text

    for _ in range(3):
        search(registered.body["phone"])  # hits are not misses
    search("090-9999-0001")
    search("090-9999-0002")
    assert _alerts(client, RuleName.SEARCH_MISSES) == []
    search("090-9999-0003")
    (alert,) = _alerts(client, RuleName.SEARCH_MISSES)
    assert (alert["actor"], alert["count"]) == ("sales1", 3)


# --- review_pending ------------------------------------------------------------------------------


def test_review_pending(alerting: Callable[..., TestClient]) -> None:
    client = alerting()
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=8)
    manager = login(client, cast.MANAGER)
    with_visit = purpose(manager, "contract", visit=customer.visit_id)
    assert client.get(f"/customers/{customer.id}", headers=with_visit).status_code == 200
    assert _alerts(client, RuleName.REVIEW_PENDING) == []
    _manager_reads(client, [customer.id, customer.id])
    (alert,) = _alerts(client, RuleName.REVIEW_PENDING)
    assert (alert["actor"], alert["count"]) == ("manager1", 2)


# --- presence_failures ---------------------------------------------------------------------------


def _failed_proof(
    actor: Actor, customer_id: str, denial: str = "presence-not-proven"
) -> EventDraft:
    return EventDraft(
        actor=actor,
        action=Action.ATTACH,
        resource="visits/00000000-0000-4000-8000-00000000000a",
        outcome=Outcome.DENIED,
        customer_ids=(customer_id,),
        denial=denial,
    )


CUSTOMER = "00000000-0000-4000-8000-0000000000c1"
OTHER_SALES = Actor(name="sales2", id=None, role="sales", store="S002", terminal=None)


def test_one_customers_proofs_failing_five_times(alerting: Callable[..., TestClient]) -> None:
    client = alerting()
    # From two callers: the customer is the subject, whoever tries.
    _append(client, *[_failed_proof(SALES, CUSTOMER) for _ in range(2)])
    _append(client, *[_failed_proof(OTHER_SALES, CUSTOMER) for _ in range(2)])
    assert _alerts(client, RuleName.PRESENCE_FAILURES) == []
    _append(client, _failed_proof(OTHER_SALES, CUSTOMER))
    (alert,) = _alerts(client, RuleName.PRESENCE_FAILURES)
    assert alert["count"] == 5


def test_failures_spread_over_time_stay_quiet(alerting: Callable[..., TestClient]) -> None:
    client = alerting()
    for _ in range(5):
        _append(client, _failed_proof(SALES, CUSTOMER))
        client.clock.advance(minutes=8)  # type: ignore[attr-defined]
    assert _alerts(client, RuleName.PRESENCE_FAILURES) == []


def test_a_locked_customer_fires_at_once(alerting: Callable[..., TestClient]) -> None:
    client = alerting()
    _append(client, _failed_proof(SALES, CUSTOMER, denial="presence-locked"))
    (alert,) = _alerts(client, RuleName.PRESENCE_FAILURES)
    assert alert["count"] == 1


def test_one_caller_failing_across_customers(alerting: Callable[..., TestClient]) -> None:
    client = alerting(alert_presence_failures="3/30minutes")
    customers = [f"00000000-0000-4000-8000-00000000010{n}" for n in range(4)]
    _append(client, *[_failed_proof(SALES, c) for c in customers[:3]])
    assert _alerts(client, RuleName.PRESENCE_FAILURES) == []
    _append(client, _failed_proof(SALES, customers[3]))
    (alert,) = _alerts(client, RuleName.PRESENCE_FAILURES)
    assert (alert["actor"], alert["count"]) == ("sales1", 4)


# --- privileged_change ---------------------------------------------------------------------------


def test_privileged_change_and_approval(alerting: Callable[..., TestClient]) -> None:
    client = alerting()
    _append(
        client,
        EventDraft(actor=ADMIN, action=Action.ADMIN, resource="stores/x"),
        EventDraft(
            actor=ADMIN, action=Action.ADMIN, resource="staff/y", changed_fields=("display_name",)
        ),
    )
    assert _alerts(client, RuleName.PRIVILEGED_CHANGE) == []
    _append(
        client,
        EventDraft(
            actor=ADMIN,
            action=Action.ADMIN,
            resource="staff/y",
            changed_fields=("pending_approval", "role"),
        ),
    )
    (alert,) = _alerts(client, RuleName.PRIVILEGED_CHANGE)
    assert (alert["actor"], alert["count"]) == ("admin", 1)
    auditor = Actor(name="auditor1", id=None, role="auditor", store=None, terminal=None)
    _append(client, EventDraft(actor=auditor, action=Action.ADMIN, resource="staff/y/approve"))
    by_actor = {a["actor"]: a for a in _alerts(client, RuleName.PRIVILEGED_CHANGE)}
    assert set(by_actor) == {"admin", "auditor1"}


# --- quiet -------------------------------------------------------------------------------------


def test_an_ordinary_day_raises_nothing(alerting: Callable[..., TestClient]) -> None:
    client = alerting()
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=9)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    for _ in range(3):
        assert client.get(f"/customers/{customer.id}", headers=headers).status_code == 200
    client.post("/customers/search", json={"phone": customer.body["phone"]}, headers=headers)
    assert _alerts(client) == []


def test_windows_align_on_midnight_in_tokyo() -> None:
    at = datetime(2026, 12, 1, 14, 59, tzinfo=UTC)  # 23:59 in Tokyo
    assert window_start(at, timedelta(days=1)) == datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    assert window_start(at + timedelta(minutes=2), timedelta(days=1)) == datetime(
        2026, 12, 1, 15, 0, tzinfo=UTC
    )


def test_evaluation_never_fails_a_request(
    alerting: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.audit import alerts

    async def broken(*_args: Any, **_kwargs: Any) -> list[Any]:
        raise RuntimeError("rules broken")

    monkeypatch.setattr(alerts, "find_hits", broken)
    client = alerting()
    login(client, cast.SALES)
    drain(client)
    assert login(client, cast.MANAGER)


def _bulk_read(settings: Settings) -> AlertRule:
    (rule,) = [r for r in alert_rules(settings) if r.name is RuleName.BULK_READ]
    return rule


def test_a_count_below_its_threshold_stands_only_for_this_process_and_only_briefly(
    settings: Settings,
) -> None:
    rule = _bulk_read(settings)
    assert rule.threshold is not None
    now = [0.0]
    estimates = Estimates(monotonic=lambda: now[0])
    at = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    assert not estimates.below(rule, "sales1", 1)  # never counted: ask the database
    estimates.measured(rule, "sales1", rule.threshold - 2, at)
    assert estimates.below(rule, "sales1", 1)
    assert estimates.below(rule, "sales1", 1)  # exactly at the threshold: not above it
    assert not estimates.below(rule, "sales1", 1)  # would be above: count exactly
    estimates.measured(rule, "sales1", 0, at)
    now[0] += ESTIMATE_TTL_SECONDS + 0.1
    # Other processes' events of the same caller are counted at the next look-up.
    assert not estimates.below(rule, "sales1", 1)
    assert not estimates.below(rule, "sales2", 0)
    # That look-up counts only what came since the bound (if it is within the period).
    assert estimates.bound(rule, "sales1", at + timedelta(seconds=30)) is not None
    assert estimates.bound(rule, "sales1", at) is None  # not before it
    assert estimates.bound(rule, "sales1", at + rule.period) is None  # the whole period
    assert estimates.bound(rule, "sales2", at + timedelta(seconds=30)) is None
    # Brought up to date again and again, a bound still gives way to a whole count each minute
    # (an event committed later than the lag is counted then).
    estimates.measured(rule, "sales1", 3, at + timedelta(seconds=30), full=False)
    assert estimates.bound(rule, "sales1", at + timedelta(seconds=40)) is not None
    now[0] += FULL_COUNT_SECONDS
    estimates.measured(rule, "sales1", 4, at + timedelta(seconds=50), full=False)
    assert estimates.bound(rule, "sales1", at + timedelta(seconds=60)) is None
