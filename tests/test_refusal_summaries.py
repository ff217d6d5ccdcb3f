"""Rate-limit refusals, summarised (SPEC, "Logins under attack"): the first refusal in a window is
recorded at once; the rest are counted and recorded as one denied event with ``count`` once the
window has passed, by the next unit of work that appends (in any process, through Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.audit.events import ANONYMOUS, Action, EventDraft, Outcome
from app.audit.refusals import MemoryWindows, RedisWindows, RefusalSummaries, WindowStore
from app.errors import RateLimited
from app.main import create_app
from tests import cast
from tests.conftest import SettingsFactory, login

PROXY = ("10.0.0.1", 50000)
LATER = 3600.0  # past any window (the login limit's is at most 5 minutes)


def _draft(resource: str = "auth/token") -> EventDraft:
    return EventDraft(
        actor=ANONYMOUS,
        action=Action.LOGIN,
        resource=resource,
        outcome=Outcome.DENIED,
        denial="rate-limited",
    )


# --- the windows, in memory and in Redis ---------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Callable[[], WindowStore]]:
    if request.param == "memory":
        yield MemoryWindows
        return
    settings: dict[str, str] = request.getfixturevalue("redis_settings")
    yield lambda: RedisWindows(settings["redis_url"], settings["redis_key_prefix"])


def test_a_window_counts_what_follows_its_first_refusal(
    store: Callable[[], WindowStore],
) -> None:
    async def scenario() -> None:
        windows = store()
        draft = _draft()
        assert await windows.open_or_count("k", draft, 100.0, 160.0) is True
        assert [await windows.open_or_count("k", draft, 100.0 + n, 160.0) for n in range(3)] == [
            False
        ] * 3
        assert await windows.take_due(159.0) == []
        assert await windows.take_due(160.0) == [dataclasses.replace(draft, count=3)]
        assert await windows.take_due(1000.0) == []
        # A window with nothing after its first refusal owes no summary.
        assert await windows.open_or_count("quiet", draft, 200.0, 260.0) is True
        assert await windows.take_due(1000.0) == []
        await windows.close()

    asyncio.run(scenario())


def test_a_passed_window_reopened_before_anyone_appended_keeps_its_count(
    store: Callable[[], WindowStore],
) -> None:
    async def scenario() -> None:
        windows = store()
        first, second = _draft("auth/token"), _draft("auth/password")
        await windows.open_or_count("k", first, 100.0, 160.0)
        await windows.open_or_count("k", first, 110.0, 160.0)
        await windows.open_or_count("k", first, 120.0, 160.0)
        # The window has passed; the next refusal opens a new one, recorded at once.
        assert await windows.open_or_count("k", second, 170.0, 230.0) is True
        assert await windows.open_or_count("k", second, 171.0, 230.0) is False
        assert await windows.take_due(175.0) == [dataclasses.replace(first, count=2)]
        assert await windows.take_due(230.0) == [dataclasses.replace(second, count=1)]
        await windows.close()

    asyncio.run(scenario())


def test_summaries_not_written_are_due_again(store: Callable[[], WindowStore]) -> None:
    async def scenario() -> None:
        windows = store()
        summary = dataclasses.replace(_draft(), count=7)
        await windows.put_back([summary])
        assert await windows.take_due(0.0) == [summary]
        assert await windows.take_due(0.0) == []
        await windows.close()

    asyncio.run(scenario())


def test_the_kind_and_the_caller_key_the_windows() -> None:
    async def scenario() -> None:
        summaries = RefusalSummaries(MemoryWindows(), clock=lambda: 100.0)
        staff = dataclasses.replace(
            _draft(), actor=dataclasses.replace(ANONYMOUS, id="staff-1", name="sales1")
        )
        one_customer = dataclasses.replace(
            _draft(), resource="customers/0b6f9c4e-0000-4000-8000-000000000001/presence-code"
        )
        other_customer = dataclasses.replace(
            _draft(), resource="customers/0b6f9c4e-0000-4000-8000-000000000002/presence-code"
        )
        refusal = RateLimited(30)

        def address() -> str:
            return "203.0.113.1"

        assert await summaries.admit(refusal, _draft(), address) is not None
        assert await summaries.admit(refusal, _draft(), address) is None
        assert await summaries.admit(refusal, _draft(), lambda: "203.0.113.2") is not None
        assert await summaries.admit(refusal, staff, address) is not None
        assert await summaries.admit(RateLimited(30, kind="search"), staff, address) is not None
        # Ids in the resource do not make a new kind: one summary per caller and kind.
        assert await summaries.admit(refusal, one_customer, address) is not None
        assert await summaries.admit(refusal, other_customer, address) is None

    asyncio.run(scenario())


# --- through the service ------------------------------------------------------------------------


def _app(make_settings: SettingsFactory, **overrides: Any) -> FastAPI:
    return create_app(
        make_settings(login_rate_limit="2/5minutes", trusted_proxies="10.0.0.0/8", **overrides)
    )


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _fake_clock(app: FastAPI) -> Clock:
    clock = Clock()
    app.state.runtime.refusals.clock = clock
    return clock


def _attempt(client: TestClient, address: str, password: str = "wrong-password") -> Any:
    form = {"grant_type": "password", "username": cast.SALES.login, "password": password}
    return client.post("/auth/token", data=form, headers={"X-Forwarded-For": address})


def _refusal_events(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT actor, action, resource, outcome, denial, count, request_id"
                " FROM access_event WHERE denial = 'rate-limited' ORDER BY at, chain, seq"
            )
        )
        return [dict(row._mapping) for row in rows]


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_a_flood_of_refusals_becomes_one_event_and_one_summary(
    make_settings: SettingsFactory, request: pytest.FixtureRequest, db: Engine, shared: bool
) -> None:
    extra = request.getfixturevalue("redis_settings") if shared else {}
    app = _app(make_settings, **extra)
    clock = _fake_clock(app)
    with TestClient(app, client=PROXY) as client:
        assert [_attempt(client, "203.0.113.9").status_code for _ in range(2)] == [401, 401]
        flood = [_attempt(client, "203.0.113.9") for _ in range(6)]
        assert {answer.status_code for answer in flood} == {429}
        # Recorded at once: the first refusal only.
        assert [(e["denial"], e["count"]) for e in _refusal_events(db)] == [("rate-limited", None)]
        assert _refusal_events(db)[0]["request_id"] == flood[0].headers["x-request-id"]

        # Within the window, other work appends without the summary.
        assert _attempt(client, "203.0.113.10", cast.SALES.password).status_code == 429
        manager_login = {
            "grant_type": "password",
            "username": cast.MANAGER.login,
            "password": cast.MANAGER.password,
        }
        assert client.post("/auth/token", data=manager_login).status_code == 200
        assert len(_refusal_events(db)) == 2  # and the member's own first refusal

        # Once the window has passed, the next append carries one summary of the five others.
        clock.now += LATER
        appending = client.post("/auth/token", data=manager_login)
        assert appending.status_code == 200
    events = _refusal_events(db)
    summaries = [e for e in events if e["count"] is not None]
    assert [
        (e["actor"], e["action"], e["resource"], e["outcome"], e["count"]) for e in summaries
    ] == [(None, "login", "auth/token", "denied", 5)]
    assert summaries[0]["request_id"] == appending.headers["x-request-id"]


def test_processes_sharing_redis_summarise_together(
    make_settings: SettingsFactory, redis_settings: dict[str, str], db: Engine
) -> None:
    first_app = _app(make_settings, **redis_settings)
    second_app = _app(make_settings, **redis_settings)
    clocks = [_fake_clock(first_app), _fake_clock(second_app)]
    first, second = TestClient(first_app, client=PROXY), TestClient(second_app, client=PROXY)
    with first, second:
        for client in (first, second):
            assert _attempt(client, "203.0.113.9").status_code == 401
        statuses = [_attempt(c, "203.0.113.9").status_code for c in (first, second) * 3]
        assert statuses == [429] * 6
        assert len(_refusal_events(db)) == 1

        for clock in clocks:
            clock.now += LATER
        headers = login(second, cast.MANAGER)
        assert headers
        login(first, cast.MANAGER)
    counts = [e["count"] for e in _refusal_events(db)]
    assert counts == [None, 5]


def test_a_refusal_of_the_current_password_is_summarised_per_member(
    make_settings: SettingsFactory, db: Engine
) -> None:
    app = _app(make_settings)
    clock = _fake_clock(app)
    with TestClient(app, client=PROXY) as client:
        headers = {**login(client, cast.SALES), "X-Forwarded-For": "203.0.113.50"}
        body = {"current": "wrong-current", "new": "a-brand-new-passphrase"}
        statuses = [client.post("/auth/password", json=body, headers=headers).status_code]
        statuses += [client.post("/auth/password", json=body, headers=headers).status_code]
        statuses += [
            client.post("/auth/password", json=body, headers=headers).status_code for _ in range(4)
        ]
        assert statuses == [403, 403, 429, 429, 429, 429]
        clock.now += LATER
        login(client, cast.MANAGER)
    refusals = [
        (e["actor"], e["resource"], e["count"])
        for e in _refusal_events(db)
        if e["resource"] == "auth/password"
    ]
    assert refusals == [("sales1", "auth/password", None), ("sales1", "auth/password", 3)]
