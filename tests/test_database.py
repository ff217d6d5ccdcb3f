"""The database under load: SQLite settings, write transactions, and the access-log chains.

Every request that touches data also appends an access event, so every such request is a
writer. On SQLite, a transaction that reads and then writes after a deferred ``BEGIN`` fails
with "database is locked" when another writer got in between; ``BEGIN IMMEDIATE`` makes writers
queue instead (within ``busy_timeout``). On PostgreSQL, concurrent appends to one chain queue on
the chain's head row. Either way each chain stays a gapless, correctly linked sequence.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, make_url, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app import db as app_db
from app.audit import repository as audit_repository
from app.audit.chain import GENESIS_HASH, derive_chain_key, seal
from app.config import Settings
from app.db import (
    SQLITE_BUSY_TIMEOUT_MS,
    WriterQueue,
    create_request_engine,
    create_sync_engine,
    is_sqlite,
)
from app.keys import decode_key
from app.main import create_app
from app.models import AccessEvent, AccessEventCustomer, AuditChain
from tests import cast, databases
from tests.conftest import SettingsFactory, login
from tests.world import purpose, register_customer

CONCURRENT_REQUESTS = 20
MEMBERS = list(cast.STAFF)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A copy of the migrated, seeded SQLite template (these tests are about SQLite only)."""
    return databases.sqlite_copy(sqlite_template, tmp_path / "sqlite")


def _sqlite_path(url: str) -> str:
    database = make_url(url).database
    assert database
    return database


# --- SQLite connection settings ---------------------------------------------------------------

_PRAGMAS = ("journal_mode", "foreign_keys", "busy_timeout")


def _expected_pragmas() -> tuple[Any, ...]:
    return ("wal", 1, SQLITE_BUSY_TIMEOUT_MS)


def test_sqlite_request_engine_pragmas(sqlite_url: str) -> None:
    async def pragmas() -> tuple[Any, ...]:
        engine = create_request_engine(sqlite_url)
        try:
            async with engine.connect() as connection:
                values = [
                    (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                    for name in _PRAGMAS
                ]
        finally:
            await engine.dispose()
        return tuple(values)

    assert asyncio.run(pragmas()) == _expected_pragmas()
    assert SQLITE_BUSY_TIMEOUT_MS >= 1000


def test_sqlite_sync_engine_pragmas(sqlite_url: str) -> None:
    engine = create_sync_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            values = tuple(
                connection.exec_driver_sql(f"PRAGMA {name}").scalar() for name in _PRAGMAS
            )
    finally:
        engine.dispose()
    assert values == _expected_pragmas()


def test_sqlite_foreign_keys_are_enforced(sqlite_url: str) -> None:
    engine = create_sync_engine(sqlite_url)
    try:
        with pytest.raises(IntegrityError, match="FOREIGN KEY"), engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO staff (id, login, display_name, role, store_id, password_hash,"
                    " active, auth_epoch, created_at, updated_at) VALUES ('x', 'x', 'x',"
                    " 'sales', 'no-such-store', 'x', 1, 0, '2026-01-01', '2026-01-01')"
                )
            )
    finally:
        engine.dispose()


def _try_to_write_from_outside(path: str) -> str | None:
    """Take the write lock from another connection, without waiting; the error if refused."""
    outsider = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        outsider.execute("BEGIN IMMEDIATE")
        outsider.execute("ROLLBACK")
        return None
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        outsider.close()


def test_sqlite_request_transactions_begin_immediate(sqlite_url: str) -> None:
    # A transaction that has only read so far already holds the write lock: it cannot later
    # fail to upgrade (which busy_timeout does not cure), and other writers queue behind it.
    path = _sqlite_path(sqlite_url)

    async def read_inside_a_transaction() -> str | None:
        engine = create_request_engine(sqlite_url)
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT count(*) FROM staff"))
                assert connection.in_transaction()
                refused = await asyncio.to_thread(_try_to_write_from_outside, path)
                await connection.rollback()
        finally:
            await engine.dispose()
        return refused

    assert asyncio.run(read_inside_a_transaction()) == "database is locked"
    assert _try_to_write_from_outside(path) is None


def test_sqlite_sync_transactions_begin_immediate(sqlite_url: str) -> None:
    engine = create_sync_engine(sqlite_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT count(*) FROM staff"))
            assert _try_to_write_from_outside(_sqlite_path(sqlite_url)) == "database is locked"
    finally:
        engine.dispose()


# --- one writer at a time within the process (SQLite) -----------------------------------------
# The request engine queues its transactions before BEGIN IMMEDIATE, first come first served, so
# that none waits in SQLite's busy handler. With busy_timeout 0 any such wait would fail at once
# with "database is locked": these tests need no timing.


def _no_busy_wait(engine: Any) -> None:
    @sa_event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.close()


def test_sqlite_request_transactions_queue_in_the_process(sqlite_url: str) -> None:
    async def writers() -> list[int]:
        queue = WriterQueue()
        engine = create_request_engine(sqlite_url, writers=queue)
        _no_busy_wait(engine)
        inside: list[int] = []

        async def one(n: int) -> int:
            async with engine.begin() as connection:
                inside.append(n)
                assert len(inside) == 1  # alone in a write transaction
                await connection.execute(text("SELECT count(*) FROM staff"))
                await asyncio.sleep(0)
                await connection.execute(text("UPDATE staff SET updated_at = updated_at"))
                inside.remove(n)
            return n

        try:
            done = await asyncio.gather(*(one(n) for n in range(CONCURRENT_REQUESTS)))
        finally:
            await engine.dispose()
        assert queue.holder is None and queue.waiting() == 0
        return done

    assert asyncio.run(writers()) == list(range(CONCURRENT_REQUESTS))


def test_writer_queue_is_first_come_first_served() -> None:
    async def scenario() -> list[str]:
        queue = WriterQueue()
        order: list[str] = []

        async def writer(name: str) -> None:
            await queue.acquire(name)
            order.append(name)
            await asyncio.sleep(0)
            queue.release(name)

        await queue.acquire("first")
        tasks = [asyncio.create_task(writer(name)) for name in ("a", "b", "c")]
        await asyncio.sleep(0)  # a, b and c are waiting
        assert queue.waiting() == 3
        queue.release("first")  # handed to a at once: a newcomer cannot overtake it
        assert queue.holder == "a"
        late = asyncio.create_task(writer("late"))
        await asyncio.gather(*tasks, late)
        assert queue.holder is None
        return order

    assert asyncio.run(scenario()) == ["a", "b", "c", "late"]


def test_writer_queue_wait_is_bounded_and_cancellable() -> None:
    async def scenario() -> None:
        queue = WriterQueue(timeout_seconds=0.01)
        await queue.acquire("holder")
        with pytest.raises(OperationalError, match="database is locked"):
            await queue.acquire("other")  # as SQLite's busy timeout would answer
        cancelled = asyncio.create_task(queue.acquire("cancelled"))
        waiting = asyncio.create_task(queue.acquire("next"))
        await asyncio.sleep(0)
        cancelled.cancel()
        queue.release("holder")
        assert queue.holder == "next"  # the cancelled waiter is skipped
        await waiting
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        queue.release("next")
        assert queue.holder is None and queue.waiting() == 0

    asyncio.run(scenario())


def test_concurrent_audited_reads_on_sqlite_never_wait_in_sqlite(
    settings: Settings, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not is_sqlite(settings.resolved_database_url):
        pytest.skip("the queue of writers is SQLite's")
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        customer = register_customer(client, sales)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    # From here on a connection that waited for SQLite's lock would fail: 503, not 200.
    monkeypatch.setattr(app_db, "SQLITE_BUSY_TIMEOUT_MS", 0)
    reads = [
        {"method": "GET", "url": f"/customers/{customer.id}", "headers": headers}
        for _ in range(CONCURRENT_REQUESTS)
    ]
    assert asyncio.run(_concurrently(settings, reads)) == [200] * CONCURRENT_REQUESTS
    _check_chains(db, settings)


# --- concurrent writers keep the chains consistent ---------------------------------------------


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    # These tests are about concurrent commits, not about the login limit, which counts the
    # attempts in flight from one address (see test_logins_under_attack.py).
    return make_settings(login_rate_limit="1000/minute")


@pytest.fixture
def one_chain_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event of the process on one chain, so that concurrent appends must queue on it
    (and race to create its head row), instead of usually landing on different chains."""
    monkeypatch.setattr(audit_repository, "CHAINS_PER_PROCESS", 1)


def _check_chains(db: Engine, settings: Settings) -> int:
    """Every chain is 1..n without gaps, linked and sealed, and its head row agrees; the count."""
    assert settings.index_key is not None
    chain_key = derive_chain_key(decode_key(settings.index_key.get_secret_value(), "index"))
    with Session(db) as session:
        heads = {head.chain: head for head in session.scalars(select(AuditChain))}
        events = session.scalars(select(AccessEvent).order_by(AccessEvent.chain, AccessEvent.seq))
        by_chain: dict[str, list[AccessEvent]] = defaultdict(list)
        for event in events:
            by_chain[event.chain].append(event)
        links: dict[str, list[str]] = defaultdict(list)
        for link in session.scalars(
            select(AccessEventCustomer).order_by(AccessEventCustomer.position)
        ):
            links[link.event_id].append(link.customer_id)

        assert set(heads) == set(by_chain)
        for chain, chain_events in by_chain.items():
            assert [e.seq for e in chain_events] == list(range(1, len(chain_events) + 1)), chain
            assert heads[chain].seq == chain_events[-1].seq
            previous = GENESIS_HASH
            for event in chain_events:
                assert event.prev_hash == previous, (chain, event.seq)
                fields = {
                    column: getattr(event, column)
                    for column in AccessEvent.__table__.columns.keys()  # noqa: SIM118
                }
                fields["customer_ids"] = links.get(event.id, [])
                assert event.hash == seal(chain_key, previous, fields), (chain, event.seq)
                previous = event.hash
            assert heads[chain].head_hash == previous
        return sum(len(chain_events) for chain_events in by_chain.values())


async def _concurrently(settings: Settings, requests: list[dict[str, Any]]) -> list[int]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            responses = await asyncio.gather(*(client.request(**r) for r in requests))
    finally:
        await app.state.runtime.engine.dispose()
    return [response.status_code for response in responses]


def _login_request(member: cast.Member, n: int) -> dict[str, Any]:
    return {
        "method": "POST",
        "url": "/auth/token",
        "data": {"grant_type": "password", "username": member.login, "password": member.password},
        "headers": {"X-Terminal-Id": f"POS-{n:02d}"},
    }


@pytest.mark.usefixtures("one_chain_per_process")
def test_concurrent_logins(settings: Settings, db: Engine) -> None:
    members = [MEMBERS[n % len(MEMBERS)] for n in range(CONCURRENT_REQUESTS)]
    requests = [_login_request(member, n) for n, member in enumerate(members)]
    statuses = asyncio.run(_concurrently(settings, requests))
    assert statuses == [200] * CONCURRENT_REQUESTS
    assert _check_chains(db, settings) == CONCURRENT_REQUESTS


def test_concurrent_failed_logins(settings: Settings, db: Engine) -> None:
    # Refusals commit their own event after a rollback: the same chains, the same guarantees.
    requests = [
        {
            "method": "POST",
            "url": "/auth/token",
            "data": {"grant_type": "password", "username": m.login, "password": "wrong-password"},
        }
        for m in (MEMBERS * 3)[:CONCURRENT_REQUESTS]
    ]
    statuses = asyncio.run(_concurrently(settings, requests))
    assert statuses == [401] * CONCURRENT_REQUESTS
    assert _check_chains(db, settings) == CONCURRENT_REQUESTS


@pytest.mark.usefixtures("one_chain_per_process")
def test_concurrent_logouts_on_one_chain(settings: Settings, db: Engine) -> None:
    store_members = [m for m in cast.STAFF if m.store == "S001"]

    async def scenario() -> list[int]:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                logins = await asyncio.gather(
                    *(
                        c.request(**_login_request(store_members[n % len(store_members)], n))
                        for n in range(CONCURRENT_REQUESTS)
                    )
                )
                assert [r.status_code for r in logins] == [200] * CONCURRENT_REQUESTS
                tokens = [r.json()["access_token"] for r in logins]
                logouts = await asyncio.gather(
                    *(
                        c.post("/auth/logout", headers={"Authorization": f"Bearer {t}"})
                        for t in tokens
                    )
                )
                after = await asyncio.gather(
                    *(c.get("/auth/me", headers={"Authorization": f"Bearer {t}"}) for t in tokens)
                )
        finally:
            await app.state.runtime.engine.dispose()
        assert [r.status_code for r in after] == [401] * CONCURRENT_REQUESTS
        return [r.status_code for r in logouts]

    assert asyncio.run(scenario()) == [204] * CONCURRENT_REQUESTS
    assert _check_chains(db, settings) == 2 * CONCURRENT_REQUESTS
    with db.connect() as connection:
        revoked = connection.execute(text("SELECT count(*) FROM revoked_token")).scalar()
        chains = connection.execute(text("SELECT chain FROM audit_chain")).scalars().all()
    assert revoked == CONCURRENT_REQUESTS
    assert len(chains) == 1


def test_the_api_pool_keeps_its_size_and_opens_no_overflow(
    make_settings: SettingsFactory, backend: str
) -> None:
    """A burst beyond ``SHOPVAULT_DB_POOL_SIZE`` waits for a connection: overflow connections
    would be opened for the burst and closed after it, one new backend per request. The size
    is shared by the session pool and the snapshot reads, and bounds both together."""
    if backend != "postgres":
        pytest.skip("SQLite's engine has no pool of connections to a server")
    from app.runtime import Runtime

    runtime = Runtime.build(make_settings(db_pool_size=3))
    opened: list[object] = []
    sa_event.listen(
        runtime.engine.sync_engine, "connect", lambda conn, _record: opened.append(conn)
    )

    reads = runtime.snapshot_reads
    assert reads is not None
    most_reads: list[int] = []

    async def burst() -> None:
        async def hold() -> None:
            async with runtime.engine.connect() as connection:
                await connection.execute(text("SELECT pg_sleep(0.05)"))

        async def read() -> None:
            await reads.fetch("SELECT pg_sleep(0.05)", [])
            most_reads.append(reads.open_connections)

        try:
            for _ in range(2):
                await asyncio.gather(*(hold() for _ in range(9)), *(read() for _ in range(9)))
        finally:
            await runtime.close()

    asyncio.run(burst())
    assert reads.size == 1
    assert len(opened) == 2
    assert max(most_reads) == 1
    assert reads.open_connections == 0
