"""Limits that hold across API processes: two uvicorn servers (separate processes, as a chain
deploys them) share one database and, when configured, one Redis. With Redis, login throttling,
the search limit and the presence locks add up over both servers; without it each process
counts on its own (the control: the same calls then get through) and says so when it starts.
The daily message cap lives in the database, so it holds across processes either way, even
for sends racing each other.
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests import cast
from tests.conftest import login
from tests.test_key_rotation_online import uvicorn_server, wait_until_up
from tests.world import KNOWN_PINS, Registered, purpose, register_customer

MODES = [
    pytest.param("sqlite", False, id="sqlite-memory"),
    pytest.param("sqlite", True, id="sqlite-redis"),
    pytest.param("postgres", True, id="postgres-redis"),
]
MESSAGE = {
    "channel": "sms",
    "template": "inquiry_follow_up",
    "variables": {
        "inquiry_date": "2026-11-20",
        "summary": "ご依頼の件、確認できました。",
        "store_name": "渋谷店",
    },
}


@dataclass
class Pair:
    """Two servers of one deployment, and what their logs said."""

    first: httpx.Client
    second: httpx.Client
    logs: list[Path]

    def alternately(self) -> Iterator[httpx.Client]:
        while True:
            yield self.first
            yield self.second


@pytest.fixture
def pair(
    request: pytest.FixtureRequest,
    database_url: str,
    test_keys: dict[str, SecretStr],
    tmp_path: Path,
) -> Iterator[Pair]:
    shared: bool = request.node.callspec.params["shared"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPVAULT_")}
    env.update(
        {
            "SHOPVAULT_DATA_DIR": str(tmp_path / "data"),
            "SHOPVAULT_DATABASE_URL": database_url,
            "SHOPVAULT_LOGIN_RATE_LIMIT": "3/5minutes",
            "SHOPVAULT_SEARCH_RATE_LIMIT": "3/10minutes",
            "SHOPVAULT_PRESENCE_LOCK": "2/30minutes;5/24hours",
            "SHOPVAULT_MESSAGE_DAILY_CAP": "2",
            **{
                f"SHOPVAULT_{name.upper()}": key.get_secret_value()
                for name, key in test_keys.items()
            },
        }
    )
    if shared:
        redis: dict[str, str] = request.getfixturevalue("redis_settings")
        env["SHOPVAULT_REDIS_URL"] = redis["redis_url"]
        env["SHOPVAULT_REDIS_KEY_PREFIX"] = redis["redis_key_prefix"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with ExitStack() as stack:
        bases = [stack.enter_context(uvicorn_server(env, tmp_path, log)) for log in logs]
        for base in bases:
            wait_until_up(base)
        first, second = (
            stack.enter_context(httpx.Client(base_url=base, timeout=60)) for base in bases
        )
        yield Pair(first, second, logs)


def _attach(client: httpx.Client, headers: dict[str, str], customer: Registered, pin: str) -> Any:
    body = {
        "type": "inquiry",
        "customer_id": customer.id,
        "presence": {"method": "pin", "pin": pin},
    }
    return client.post("/visits", json=body, headers=headers)


def _wrong_pin(right: str) -> str:
    return next(p for p in (f"{n:04d}" for n in random.sample(range(10000), 50)) if p != right)


@pytest.mark.parametrize(("backend", "shared"), MODES, indirect=["backend"])
def test_limits_hold_across_processes_only_with_redis(pair: Pair, shared: bool) -> None:
    # Every token first: the login test at the end fills the address's failure counter.
    sales = login(pair.first, cast.SALES)
    other_store = login(pair.second, cast.SALES_OTHER_STORE)
    customer = register_customer(pair.first, sales, seed=81)
    servers = pair.alternately()

    # Search: 3 per caller; the fourth, on the other server.
    search = purpose(sales, "contract")
    answers = [
        next(servers).post(
            "/customers/search", json={"phone": customer.body["phone"]}, headers=search
        )
        for _ in range(4)
    ]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert answers[3].status_code == (429 if shared else 200), answers[3].text

    # Presence: two wrong PINs, one on each server, lock the customer's PIN proofs everywhere.
    right = KNOWN_PINS[customer.id]
    for client in (pair.first, pair.second):
        wrong = _attach(client, other_store, customer, _wrong_pin(right))
        assert wrong.json()["type"] == "/problems/presence-not-proven", wrong.text
    proved = _attach(pair.first, other_store, customer, right)
    if shared:
        assert proved.json()["type"] == "/problems/presence-locked", proved.text
    else:
        assert proved.status_code == 201, proved.text

    # Messages: at most 2 per customer a day, six sends racing over both servers.
    statuses = _race_messages(pair, sales, customer)
    assert sorted(statuses) == [202, 202, 429, 429, 429, 429], statuses

    # Logins: 3 failures per login, counted before the password is checked.
    form = {"grant_type": "password", "username": cast.MANAGER.login, "password": "wrong-guess"}
    for client in (pair.first, pair.second, pair.first):
        assert client.post("/auth/token", data=form).status_code == 401
    right_password = {**form, "password": cast.MANAGER.password}
    last = pair.second.post("/auth/token", data=right_password)
    assert last.status_code == (429 if shared else 200), last.text


def _race_messages(pair: Pair, sales: dict[str, str], customer: Registered) -> list[int]:
    headers = purpose(sales, "support", visit=customer.visit_id)
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def send(client: httpx.Client) -> None:
        barrier.wait()
        response = client.post(
            f"/customers/{customer.id}/messages",
            json=MESSAGE,
            headers={**headers, "Idempotency-Key": f"race-{uuid.uuid4()}"},
        )
        statuses.append(response.status_code)

    threads = [
        threading.Thread(target=send, args=(client,)) for client in (pair.first, pair.second) * 3
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.parametrize(("backend", "shared"), MODES[:2], indirect=["backend"])
def test_each_process_says_where_it_counts(pair: Pair, shared: bool) -> None:
    assert pair.first.get("/healthz").status_code == 200
    for log in pair.logs:
        text = log.read_text(encoding="utf-8")
        if shared:
            assert "limits shared through Redis" in text
            assert "memory" not in text
        else:
            assert "limits kept in this process's memory" in text
