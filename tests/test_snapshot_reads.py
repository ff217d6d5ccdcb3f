"""The process's snapshot reads (``app/db.py: SnapshotReads``): at most ``size`` connections, a
statement beyond them waits its turn; a connection comes back only from a statement that
completed (an error of the statement itself included), never from one that was cancelled or
lost; one the server ended while idle is not handed out; errors are SQLAlchemy's, as the
session's would be."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app.db import DatabaseUnavailable, SnapshotReads


@pytest.fixture
def url(backend: str, database_url: str) -> Iterator[str]:
    if backend != "postgres":
        pytest.skip("the snapshot reads are PostgreSQL's")
    yield database_url


def _run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_at_most_size_connections_and_every_statement_answered(url: str) -> None:
    async def scenario() -> tuple[list[int], int, int]:
        reads = SnapshotReads(url, 2)
        most: list[int] = []

        async def one(n: int) -> int:
            rows = await reads.fetch("SELECT $1::int, pg_sleep(0.02)", [n])
            most.append(reads.open_connections)
            return int(rows[0][0])

        try:
            answers = await asyncio.gather(*(one(n) for n in range(12)))
            return answers, max(most), reads.statements
        finally:
            await reads.close()

    answers, most, statements = _run(scenario())  # type: ignore[misc]
    assert answers == list(range(12))
    assert most == 2
    assert statements == 12


def test_a_failed_statement_gives_its_connection_back(url: str) -> None:
    async def scenario() -> tuple[int, int]:
        reads = SnapshotReads(url, 1)
        try:
            await reads.fetch("SELECT 1", [])
            (pid,) = (await reads.fetch("SELECT pg_backend_pid()", []))[0]
            with pytest.raises(OperationalError) as refused:
                await reads.fetch("SELECT 1 / 0", [])
            assert isinstance(refused.value, DatabaseUnavailable)
            (again,) = (await reads.fetch("SELECT pg_backend_pid()", []))[0]
            return pid, again
        finally:
            await reads.close()

    pid, again = _run(scenario())  # type: ignore[misc]
    assert again == pid


def test_a_cancelled_statement_closes_its_connection(url: str) -> None:
    async def scenario() -> tuple[int, int, int]:
        reads = SnapshotReads(url, 1)
        try:
            (pid,) = (await reads.fetch("SELECT pg_backend_pid()", []))[0]
            slow = asyncio.create_task(reads.fetch("SELECT pg_sleep(5)", []))
            await asyncio.sleep(0.2)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            left = reads.open_connections
            (after,) = (await reads.fetch("SELECT pg_backend_pid()", []))[0]
            return pid, left, after
        finally:
            await reads.close()

    pid, left, after = _run(scenario())  # type: ignore[misc]
    assert left == 0
    assert after != pid


def test_a_connection_the_server_ended_while_idle_is_not_used(url: str, db: Engine) -> None:
    async def scenario() -> tuple[int, int]:
        reads = SnapshotReads(url, 1)
        try:
            (pid,) = (await reads.fetch("SELECT pg_backend_pid()", []))[0]
            with db.connect() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await asyncio.sleep(0.2)  # the socket's end reaches the event loop
            (after,) = (await reads.fetch("SELECT pg_backend_pid()", []))[0]
            return pid, after
        finally:
            await reads.close()

    pid, after = _run(scenario())  # type: ignore[misc]
    assert after != pid


def test_closed_reads_refuse_as_an_unavailable_database(url: str) -> None:
    async def scenario() -> int:
        reads = SnapshotReads(url, 1)
        await reads.fetch("SELECT 1", [])
        await reads.close()
        with pytest.raises(OperationalError):
            await reads.fetch("SELECT 1", [])
        return reads.open_connections

    assert _run(scenario()) == 0


def test_a_statement_that_waits_too_long_for_a_connection_is_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.db.SNAPSHOT_WAIT_SECONDS", 0.2)

    async def scenario() -> list[object]:
        reads = SnapshotReads(url, 1)
        try:
            slow = asyncio.create_task(reads.fetch("SELECT pg_sleep(1)", []))
            await asyncio.sleep(0.1)
            with pytest.raises(OperationalError):
                await reads.fetch("SELECT 1", [])
            await slow
            return [row[0] for row in await reads.fetch("SELECT 1", [])]
        finally:
            await reads.close()

    assert _run(scenario()) == [1]
