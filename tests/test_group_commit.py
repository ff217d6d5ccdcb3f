"""Group commit (PostgreSQL): the events of read-only requests are committed together, each
before its request answers; a request that wrote keeps its events in its own transaction; a
batch that fails fails every request in it, and the log still verifies."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine, text

from app.audit.events import Action, Actor, EventDraft, Outcome
from app.config import Settings
from app.db import DatabaseUnavailable
from app.main import create_app
from app.runtime import Runtime
from tests import cast
from tests.audit_helpers import verify_cli
from tests.conftest import login
from tests.servers import serving
from tests.test_unit_of_work import Trap, insert_trap
from tests.world import purpose, register_customer

__all__ = ["insert_trap"]  # a fixture used below


@pytest.fixture
def postgres(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("SQLite has one writer: each request commits its own events")


def _draft(n: int) -> EventDraft:
    return EventDraft(
        actor=Actor(name="cli", id=None, role=None, store=None, terminal=None),
        purpose="audit",
        reason=f"group commit {n}",
        action=Action.READ,
        resource="access-events",
        outcome=Outcome.ALLOWED,
    )


def _transactions(db: Engine, request_ids: list[str]) -> dict[str, str]:
    """Each request's events by the transaction that wrote them (PostgreSQL's ``xmin``)."""
    with db.connect() as connection:
        rows = connection.execute(
            text("SELECT request_id, xmin::text FROM access_event WHERE request_id = ANY(:ids)"),
            {"ids": request_ids},
        ).all()
    return {request_id: xmin for request_id, xmin in rows}


@pytest.mark.usefixtures("postgres")
def test_requests_that_wait_together_commit_together(
    settings: Settings,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runtime = Runtime.build(settings)
    group = runtime.group_commit
    assert group is not None
    request_ids = [f"group-{n}" for n in range(10)]

    async def together() -> None:
        try:
            await asyncio.gather(
                *(group.append([_draft(n)], request_id=r) for n, r in enumerate(request_ids))
            )
            await runtime.drain()
        finally:
            await runtime.close()

    asyncio.run(together())
    assert group.batches == 1
    transactions = _transactions(db, request_ids)
    assert transactions.keys() == set(request_ids)
    assert len(set(transactions.values())) == 1
    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code == 0, result


@pytest.mark.usefixtures("postgres")
def test_a_failed_batch_fails_every_request_in_it_and_the_log_still_verifies(
    settings: Settings,
    db: Engine,
    insert_trap: Trap,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runtime = Runtime.build(settings)
    group = runtime.group_commit
    assert group is not None

    async def attempt(ids: list[str]) -> list[BaseException | None]:
        return await asyncio.gather(
            *(group.append([_draft(n)], request_id=r) for n, r in enumerate(ids)),
            return_exceptions=True,
        )

    async def run() -> tuple[list[BaseException | None], list[BaseException | None]]:
        try:
            insert_trap.set()
            failed = await attempt([f"failed-{n}" for n in range(5)])
            insert_trap.remove()
            landed = await attempt([f"landed-{n}" for n in range(5)])
            await runtime.drain()
            return failed, landed
        finally:
            await runtime.close()

    failed, landed = asyncio.run(run())
    assert all(isinstance(outcome, DatabaseUnavailable) for outcome in failed), failed
    assert landed == [None] * 5
    assert _transactions(db, [f"failed-{n}" for n in range(5)]) == {}
    assert len(_transactions(db, [f"landed-{n}" for n in range(5)])) == 5
    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code == 0, result


@pytest.fixture
def server(settings: Settings, postgres: None) -> Iterator[str]:
    with serving(create_app(settings)) as base_url:
        yield base_url


def test_concurrent_reads_share_commits_and_writes_keep_their_own(
    server: str,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: Settings,
) -> None:
    with httpx.Client(base_url=server, timeout=60) as client:
        sales = login(client, cast.SALES)  # type: ignore[arg-type]
        customer = register_customer(client, sales, seed=90)  # type: ignore[arg-type]
    # The registration wrote the customer: its event is in the customer's own transaction.
    with db.connect() as connection:
        row_xmin = connection.execute(
            text("SELECT xmin::text FROM customer WHERE id = :id"), {"id": customer.id}
        ).scalar_one()
        created = connection.execute(
            text(
                "SELECT e.xmin::text FROM access_event e JOIN access_event_customer c "
                "ON c.event_id = e.id WHERE c.customer_id = :id AND e.action = 'create'"
            ),
            {"id": customer.id},
        ).scalar_one()
    assert created == row_xmin

    headers = purpose(sales, "contract", visit=customer.visit_id)
    answers: list[httpx.Response] = []
    start = threading.Barrier(16)

    unrecorded: list[str] = []

    def read() -> None:
        with httpx.Client(base_url=server, timeout=60) as client:
            start.wait()
            for _ in range(5):
                answer = client.get(f"/customers/{customer.id}", headers=headers)
                answers.append(answer)
                # The event was committed before the answer left.
                request_id = answer.headers["x-request-id"]
                if not _transactions(db, [request_id]):
                    unrecorded.append(request_id)

    threads = [threading.Thread(target=read) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 80
    assert unrecorded == []
    request_ids = [a.headers["x-request-id"] for a in answers]
    transactions = _transactions(db, request_ids)
    assert transactions.keys() == set(request_ids)
    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code == 0, result
