"""Checkpoints and the append-only log: triggers, the checkpoint file (linked, signed, under a
lock, written while events are written and after each passing verification), and checkpoints
that only move forward."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from app.audit import repository as audit_repository
from app.audit.chain import GENESIS_HASH, AuditKeys
from app.audit.checkpoints import parse_line
from app.audit.integrity import AuditIntegrity, CheckpointScheduler
from app.config import Settings
from app.db import WriterQueue
from app.keys import decode_key
from app.main import create_app
from tests import cast
from tests.audit_helpers import (
    APPEND_ONLY_TABLES,
    Clock,
    auditor_headers,
    checkpoint_lines,
    drain,
    drop_append_only_triggers,
    problem_names,
    verify_api,
    with_clock,
)
from tests.conftest import login
from tests.world import register_customer


@pytest.fixture
def one_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_repository, "CHAINS_PER_PROCESS", 1)


def _keys(settings: Settings) -> AuditKeys:
    assert settings.index_key is not None
    return AuditKeys.derive(decode_key(settings.index_key.get_secret_value(), "index"))


# --- append-only in the database ---------------------------------------------------------------


def test_the_log_tables_refuse_changes(client: TestClient, db: Engine, backend: str) -> None:
    register_customer(client, login(client, cast.SALES), seed=1)  # an event with a customer
    drain(client)  # and a checkpoint
    with db.connect() as connection:
        counts = {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in APPEND_ONLY_TABLES
        }
    assert all(counts.values()), counts
    statements = ["UPDATE access_event SET actor = 'x'", "DELETE FROM access_event"]
    statements += [f"DELETE FROM {table}" for table in APPEND_ONLY_TABLES]
    statements += ["UPDATE audit_chain_registry SET mac = 'x'"]
    if backend == "postgres":
        statements += [f"TRUNCATE {table} CASCADE" for table in APPEND_ONLY_TABLES]
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"), db.begin() as connection:
            connection.execute(text(statement))
    # Heads are not append-only (updated on every append): their MAC protects them.
    with db.begin() as connection:
        connection.execute(text("UPDATE audit_chain SET seq = seq"))


# --- the checkpoint file ------------------------------------------------------------------------


def test_checkpoints_are_linked_signed_and_kept_in_both_places(
    client: TestClient, settings: Settings, db: Engine
) -> None:
    login(client, cast.SALES)
    drain(client)
    verify_api(client, full=True)
    login(client, cast.MANAGER)
    verify_api(client, full=False)
    lines = checkpoint_lines(settings)
    assert [line["n"] for line in lines] == list(range(1, len(lines) + 1))
    assert [line["kind"] for line in lines][:1] == ["append"]  # written by the first append
    assert [line["kind"] for line in lines][-2:] == ["verify", "verify"]
    previous = GENESIS_HASH
    keys = _keys(settings)
    raw = settings.resolved_checkpoint_file.read_text().splitlines()
    for line, text_line in zip(lines, raw, strict=True):
        assert line["prev"] == previous
        assert parse_line(keys, text_line) is not None
        previous = line["hash"]
    with db.connect() as connection:
        stored = set(connection.execute(text("SELECT line FROM audit_checkpoint")).scalars())
    assert stored == set(raw)
    # Each line carries only the heads that changed since the one before.
    assert all(line["heads"] for line in lines[:-1])


def test_a_line_not_signed_with_the_key_is_not_a_checkpoint(settings: Settings) -> None:
    keys = _keys(settings)
    other = AuditKeys.derive(b"another index key, 32 bytes long!")
    with TestClient(create_app(settings)) as client:
        login(client, cast.SALES)
    line = settings.resolved_checkpoint_file.read_text().splitlines()[0]
    assert parse_line(keys, line) is not None
    assert parse_line(other, line) is None
    edited = json.loads(line)
    chain = next(iter(edited["heads"]))
    edited["heads"][chain][0] += 100  # claim a longer chain than there is
    assert parse_line(keys, json.dumps(edited)) is None


def test_processes_append_to_one_linked_file(
    settings: Settings, db: Engine, one_chain: None
) -> None:
    keys = _keys(settings)
    # Two writers, as two processes would be: each reads what the other appended, under the lock.
    first, second = AuditIntegrity(settings, keys), AuditIntegrity(settings, keys)
    try:
        with TestClient(create_app(settings)) as client:
            login(client, cast.SALES)
            drain(client)
            login(client, cast.SALES)
            assert second.checkpoint_if_due(force=True) == []
            login(client, cast.SALES)
            assert first.checkpoint_if_due(force=True) == []
            first_lines = len(checkpoint_lines(settings))
    finally:
        first.dispose()
        second.dispose()
    lines = checkpoint_lines(settings)
    assert len(lines) >= first_lines >= 3
    for previous, line in itertools.pairwise(lines):
        assert line["prev"] == previous["hash"] and line["n"] == previous["n"] + 1


def test_a_checkpoint_at_least_every_minute_while_events_are_written(
    client: TestClient, settings: Settings
) -> None:
    clock = Clock()
    with_clock(client, clock)
    login(client, cast.SALES)
    drain(client)
    assert len(checkpoint_lines(settings)) == 1  # the first append finds no checkpoint at all
    clock.advance(seconds=30)
    login(client, cast.SALES)
    drain(client)
    assert len(checkpoint_lines(settings)) == 1
    clock.advance(seconds=31)
    login(client, cast.SALES)
    drain(client)
    lines = checkpoint_lines(settings)
    assert len(lines) == 2
    assert lines[1]["at"].startswith("2026-12-01T03:01:01")


def test_the_last_events_are_checkpointed_without_a_further_append(
    client: TestClient, settings: Settings
) -> None:
    clock = Clock()
    with_clock(client, clock)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    runtime.checkpoints.timer_seconds = 0.05
    login(client, cast.SALES)
    drain(client)
    clock.advance(seconds=10)
    login(client, cast.MANAGER)  # not due yet: a timer is set instead
    drain(client)
    assert len(checkpoint_lines(settings)) == 1
    deadline = time.monotonic() + 30
    while len(checkpoint_lines(settings)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(checkpoint_lines(settings)) == 2


def test_the_checkpoint_never_records_a_shorter_chain(
    settings: Settings, db: Engine, one_chain: None
) -> None:
    with TestClient(create_app(settings)) as client:
        for _ in range(4):
            login(client, cast.SALES)
    lines_before = checkpoint_lines(settings)
    drop_append_only_triggers(db)
    with db.begin() as connection:
        chain, seq = connection.execute(text("SELECT chain, seq FROM audit_chain")).one()
        connection.execute(
            text("DELETE FROM access_event WHERE chain = :chain AND seq = :seq"),
            {"chain": chain, "seq": seq},
        )
        previous = connection.execute(
            text("SELECT hash FROM access_event WHERE chain = :chain AND seq = :seq"),
            {"chain": chain, "seq": seq - 1},
        ).scalar_one()
        connection.execute(
            text("UPDATE audit_chain SET seq = :seq, head_hash = :hash"),
            {"seq": seq - 1, "hash": previous},
        )
    integrity = AuditIntegrity(settings, _keys(settings))
    try:
        findings = integrity.checkpoint_if_due(force=True)
        assert findings is not None and {f.problem for f in findings} == {"tail-truncated"}
        result = integrity.verify(full=True)
        assert not result.ok
    finally:
        integrity.dispose()
    assert checkpoint_lines(settings) == lines_before


def test_incremental_verification_starts_where_the_last_one_stopped(
    client: TestClient, settings: Settings
) -> None:
    for _ in range(5):
        login(client, cast.SALES)
    full = verify_api(client, full=True)
    assert full["ok"] and full["checked"] >= 6
    login(client, cast.SALES)
    incremental = verify_api(client, full=False)
    assert incremental["ok"]
    # The new events (the login, the last verification's own event, the auditor's login) and,
    # per chain, the event the last verification ended with.
    assert incremental["checked"] < full["checked"]


def test_a_deleted_chain_is_missing_for_the_incremental_verification_too(
    settings: Settings, db: Engine, one_chain: None
) -> None:
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            login(client, cast.SALES)
        assert verify_api(client, full=False)["ok"]
        chains = [c.name for c in client.app.state.runtime.audit_log._chains]  # type: ignore[attr-defined]
    drop_append_only_triggers(db)
    with db.begin() as connection:
        for chain in chains:
            connection.execute(text("DELETE FROM access_event WHERE chain = :c"), {"c": chain})
            connection.execute(text("DELETE FROM audit_chain WHERE chain = :c"), {"c": chain})
            connection.execute(
                text("DELETE FROM audit_chain_registry WHERE chain = :c"), {"c": chain}
            )
        connection.execute(text("DELETE FROM audit_checkpoint"))
    with TestClient(create_app(settings)) as client:
        result = verify_api(client, full=False)
    assert problem_names(result) == {"chain-missing"}


def test_checkpoint_file_setting(make_settings: object, tmp_path: object) -> None:
    from pathlib import Path

    assert callable(make_settings)
    default = make_settings()
    assert default.resolved_checkpoint_file == default.data_dir / "audit-checkpoints.jsonl"
    elsewhere = Path(str(tmp_path)) / "shipped" / "checkpoints.jsonl"
    settings = make_settings(audit_checkpoint_file=elsewhere)
    with TestClient(create_app(settings)) as client:
        login(client, cast.SALES)
    assert elsewhere.exists() and not default.resolved_checkpoint_file.exists()
    assert timedelta(minutes=1)  # the interval the docs state


def test_verification_without_its_checkpoint_file_is_unavailable(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings = make_settings(audit_checkpoint_file=blocker / "checkpoints.jsonl")
    with TestClient(create_app(settings)) as client:
        login(client, cast.SALES)  # appending still works: the checkpoint only logs its failure
        response = client.get("/access-events/verify", headers=auditor_headers(client))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"


def test_the_periodic_checkpoint_waits_its_turn_with_the_writers(
    client: TestClient, settings: Settings
) -> None:
    # On SQLite the API's transactions queue in the process (app/db.py); the checkpoint, written
    # from a worker thread, queues with them instead of waiting in SQLite's busy handler.
    login(client, cast.SALES)
    writers = WriterQueue()
    integrity = AuditIntegrity(settings, _keys(settings))
    scheduler = CheckpointScheduler(integrity, writers=writers)

    async def scenario() -> None:
        await writers.acquire("a request")
        run = asyncio.create_task(scheduler.close())  # a forced checkpoint of pending appends
        scheduler.on_append([])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert writers.waiting() == 1  # the checkpoint, not yet in its worker thread
        writers.release("a request")
        await run
        await scheduler.drain()
        assert writers.holder is None

    try:
        asyncio.run(scenario())
    finally:
        integrity.dispose()
