"""Someone with write access to the database (an owner, who can drop the append-only triggers)
but not the keys edits, deletes, inserts, reorders, truncates or removes whole chains: the API's
and the command line's verification catch each case and name it.

Each test writes events with one app (one process: one chain here), lets it shut down (its last
events are checkpointed), tampers with the database directly, and verifies with a new app (whose
own events go to new chains) and with ``shopvault audit verify``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.audit import repository as audit_repository
from app.config import Settings
from app.main import create_app
from tests import cast
from tests.audit_helpers import (
    drop_append_only_triggers,
    problem_names,
    verify_api,
    verify_cli,
)
from tests.conftest import login

EVENTS = 8


@pytest.fixture
def one_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_repository, "CHAINS_PER_PROCESS", 1)


@dataclass
class Log:
    chain: str
    events: list[dict[str, Any]]  # by seq

    def event(self, seq: int) -> dict[str, Any]:
        return self.events[seq - 1]


def _read_log(db: Engine, chain: str) -> Log:
    with db.connect() as connection:
        rows = connection.execute(
            text("SELECT * FROM access_event WHERE chain = :chain ORDER BY seq"), {"chain": chain}
        ).mappings()
        return Log(chain, [dict(row) for row in rows])


def _write_events(settings: Settings, db: Engine, count: int = EVENTS) -> Log:
    """``count`` logins, verified (a checkpoint), then shut down (a checkpoint of the rest)."""
    with TestClient(create_app(settings)) as client:
        for _ in range(count - 2):
            login(client, cast.SALES)
        chain = client.app.state.runtime.audit_log._chains[0].name  # type: ignore[attr-defined]
        login(client, cast.MANAGER)
    with db.connect() as connection:
        chain = connection.execute(
            text("SELECT chain FROM access_event ORDER BY seq DESC LIMIT 1")
        ).scalar_one()
    return _read_log(db, chain)


@pytest.fixture
def log(settings: Settings, db: Engine, one_chain: None) -> Iterator[Log]:
    written = _write_events(settings, db)
    assert len(written.events) == EVENTS - 1
    drop_append_only_triggers(db)
    yield written


def _verify_everywhere(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    incremental_too: bool,
) -> list[dict[str, Any]]:
    """The results of the API and the CLI (full, and incremental where asked)."""
    results = []
    with TestClient(create_app(settings)) as client:
        results.append(verify_api(client, full=True))
        if incremental_too:
            results.append(verify_api(client, full=False))
    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code != 0
    results.append(result)
    if incremental_too:
        code, result = verify_cli(settings, monkeypatch, capsys, full=False)
        assert code != 0
        results.append(result)
    return results


def _exec(db: Engine, *statements: tuple[str, dict[str, Any]]) -> None:
    with db.begin() as connection:
        for statement, params in statements:
            connection.execute(text(statement), params)


def test_an_untouched_log_verifies(
    settings: Settings,
    db: Engine,
    one_chain: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_events(settings, db)
    with TestClient(create_app(settings)) as client:
        full = verify_api(client, full=True)
        incremental = verify_api(client, full=False)
    assert full == {"ok": True, "checked": full["checked"], "first_bad_id": None, "problems": []}
    assert full["checked"] >= EVENTS - 1
    assert incremental["ok"] is True
    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code == 0 and result["ok"] is True


def test_an_edited_event(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    victim = log.event(3)
    _exec(
        db,
        ("UPDATE access_event SET actor = 'someone-else' WHERE id = :id", {"id": victim["id"]}),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=False):
        assert result["ok"] is False
        assert problem_names(result) == {"hash-mismatch"}
        assert result["first_bad_id"] == victim["id"]


def test_an_edited_customer_link(
    settings: Settings,
    db: Engine,
    one_chain: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.world import register_customer

    with TestClient(create_app(settings)) as client:
        registered = register_customer(client, login(client, cast.SALES), seed=3)
    drop_append_only_triggers(db)
    _exec(
        db,
        (
            "UPDATE access_event_customer SET customer_id = :other WHERE customer_id = :id",
            {"id": registered.id, "other": "00000000-0000-4000-8000-000000000000"},
        ),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=False):
        assert problem_names(result) == {"hash-mismatch"}


def test_a_deleted_event(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    victim = log.event(4)
    _exec(
        db,
        ("DELETE FROM access_event_customer WHERE event_id = :id", {"id": victim["id"]}),
        ("DELETE FROM access_event WHERE id = :id", {"id": victim["id"]}),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=False):
        assert problem_names(result) == {"seq-gap"}
        assert result["first_bad_id"] == log.event(5)["id"]


def test_an_inserted_event(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A forged event after the last one: the attacker cannot compute its seal (nor the head's
    # MAC), whatever else they copy.
    last = log.event(len(log.events))
    forged = {
        **last,
        "id": "11111111-1111-4111-8111-111111111111",
        "seq": last["seq"] + 1,
        "prev_hash": last["hash"],
        "hash": secrets.token_hex(32),
        "actor": "manager2",
    }
    columns = ", ".join(forged)
    values = ", ".join(f":{name}" for name in forged)
    if db.dialect.name == "postgresql":
        forged["fields"] = "[]"
        values = values.replace(":fields", "CAST(:fields AS json)")
        forged["changed_fields"] = None
    else:
        forged["fields"] = "[]"
    _exec(
        db,
        (f"INSERT INTO access_event ({columns}) VALUES ({values})", forged),
        (
            "UPDATE audit_chain SET seq = :seq, head_hash = :hash WHERE chain = :chain",
            {"seq": forged["seq"], "hash": forged["hash"], "chain": log.chain},
        ),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=True):
        assert "hash-mismatch" in problem_names(result)
        assert result["first_bad_id"] == forged["id"]


def test_reordered_events(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    second, third = log.event(2), log.event(3)
    _exec(
        db,
        ("UPDATE access_event SET seq = -1 WHERE id = :id", {"id": second["id"]}),
        ("UPDATE access_event SET seq = 2 WHERE id = :id", {"id": third["id"]}),
        ("UPDATE access_event SET seq = 3 WHERE id = :id", {"id": second["id"]}),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=False):
        assert problem_names(result) == {"hash-mismatch"}


def test_a_truncated_tail_with_its_head_set_back(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keep = len(log.events) - 2
    gone = [event["id"] for event in log.events[keep:]]
    for event_id in gone:
        _exec(
            db,
            ("DELETE FROM access_event_customer WHERE event_id = :id", {"id": event_id}),
            ("DELETE FROM access_event WHERE id = :id", {"id": event_id}),
        )
    _exec(
        db,
        (
            "UPDATE audit_chain SET seq = :seq, head_hash = :hash WHERE chain = :chain",
            {"seq": keep, "hash": log.event(keep)["hash"], "chain": log.chain},
        ),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=True):
        assert problem_names(result) == {"tail-truncated"}


def test_a_truncated_tail_with_a_replayed_head(
    settings: Settings,
    db: Engine,
    one_chain: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The attacker kept an older head row (with its valid MAC) and puts it back after deleting
    # the events written since: only the checkpoint outside the database can tell.
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            login(client, cast.SALES)
        with db.connect() as connection:
            old_head = connection.execute(text("SELECT * FROM audit_chain")).mappings().one()
        for _ in range(3):
            login(client, cast.SALES)
    drop_append_only_triggers(db)
    _exec(
        db,
        (
            "DELETE FROM access_event WHERE chain = :chain AND seq > :seq",
            {"chain": old_head["chain"], "seq": old_head["seq"]},
        ),
        (
            "UPDATE audit_chain SET seq = :seq, head_hash = :head_hash, mac = :mac "
            "WHERE chain = :chain",
            dict(old_head),
        ),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=True):
        assert problem_names(result) == {"tail-truncated"}


def test_a_whole_chain_deleted(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chain = {"chain": log.chain}
    _exec(
        db,
        (
            "DELETE FROM access_event_customer WHERE event_id IN "
            "(SELECT id FROM access_event WHERE chain = :chain)",
            chain,
        ),
        ("DELETE FROM access_event WHERE chain = :chain", chain),
        ("DELETE FROM audit_chain WHERE chain = :chain", chain),
        ("DELETE FROM audit_chain_registry WHERE chain = :chain", chain),
        ("DELETE FROM audit_checkpoint", {}),
    )
    # Named by the checkpoint file (the database's registry and checkpoints are gone too).
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=True):
        assert problem_names(result) == {"chain-missing"}
        assert {p["chain"] for p in result["problems"]} == {log.chain}


def test_a_whole_chain_deleted_is_named_by_its_registration(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings.resolved_checkpoint_file.unlink()  # no checkpoint to compare with
    chain = {"chain": log.chain}
    _exec(
        db,
        ("DELETE FROM access_event WHERE chain = :chain", chain),
        ("DELETE FROM audit_chain WHERE chain = :chain", chain),
        ("DELETE FROM audit_checkpoint", {}),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=True):
        assert problem_names(result) == {"chain-missing"}


def test_an_unregistered_chain(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _exec(db, ("DELETE FROM audit_chain_registry WHERE chain = :chain", {"chain": log.chain}))
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=True):
        assert problem_names(result) == {"chain-unregistered"}


def test_a_forged_registration_does_not_count(
    settings: Settings,
    db: Engine,
    log: Log,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _exec(
        db,
        (
            "UPDATE audit_chain_registry SET mac = :mac WHERE chain = :chain",
            {"mac": secrets.token_hex(32), "chain": log.chain},
        ),
    )
    for result in _verify_everywhere(settings, monkeypatch, capsys, incremental_too=True):
        assert problem_names(result) == {"chain-unregistered"}


def test_the_console_script_exits_non_zero(settings: Settings, db: Engine, log: Log) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from tests.audit_helpers import cli_env

    _exec(db, ("UPDATE access_event SET reason = 'x' WHERE id = :id", {"id": log.event(2)["id"]}))
    shopvault = Path(sys.executable).parent / "shopvault"
    result = subprocess.run(
        [str(shopvault), "audit", "verify", "--full"],
        env={"PATH": "/usr/bin:/bin", **cli_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert '"hash-mismatch"' in result.stdout
