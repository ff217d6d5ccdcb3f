"""Helpers for the access log's tests: the auditor's headers, verification through the API and
the command line, an attacker's write access (triggers dropped), and a controllable clock."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.cli import main
from app.config import Settings
from tests import cast
from tests.conftest import login
from tests.world import purpose

AUDIT_REASON = "定期監査のための確認作業"
APPEND_ONLY_TABLES = (
    "access_event",
    "access_event_customer",
    "audit_chain_registry",
    "audit_checkpoint",
)


def auditor_headers(client: TestClient, reason: str | None = AUDIT_REASON) -> dict[str, str]:
    return purpose(login(client, cast.AUDITOR), "audit", reason=reason)


def verify_api(client: TestClient, *, full: bool) -> dict[str, Any]:
    response = client.get(
        "/access-events/verify", params={"full": str(full).lower()}, headers=auditor_headers(client)
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def cli_env(settings: Settings) -> dict[str, str]:
    env = {
        "SHOPVAULT_DATA_DIR": str(settings.data_dir),
        "SHOPVAULT_DATABASE_URL": settings.resolved_database_url,
    }
    for name in ("jwt", "master", "index"):
        secret = getattr(settings, f"{name}_key")
        env[f"SHOPVAULT_{name.upper()}_KEY"] = secret.get_secret_value()
    if settings.audit_checkpoint_file is not None:
        env["SHOPVAULT_AUDIT_CHECKPOINT_FILE"] = str(settings.audit_checkpoint_file)
    return env


def run_cli(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, str, str]:
    """``shopvault ARGS`` in this process, with the test's settings as its environment."""
    capsys.readouterr()
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("SHOPVAULT_") and name != "SHOPVAULT_TEST_POSTGRES_URL":
                patch.delenv(name)
        for name, value in cli_env(settings).items():
            patch.setenv(name, value)
        code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def verify_cli(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    full: bool,
) -> tuple[int, dict[str, Any]]:
    args = ["audit", "verify", *(["--full"] if full else [])]
    code, out, _ = run_cli(settings, monkeypatch, capsys, *args)
    result: dict[str, Any] = json.loads(out)
    return code, result


def problem_names(result: dict[str, Any]) -> set[str]:
    return {problem["problem"] for problem in result["problems"]}


def drop_append_only_triggers(db: Engine) -> None:
    """What an owner of the database can do: take the append-only triggers away."""
    with db.begin() as connection:
        if db.dialect.name == "postgresql":
            for table in APPEND_ONLY_TABLES:
                connection.execute(text(f"DROP TRIGGER {table}_append_only ON {table}"))
                connection.execute(text(f"DROP TRIGGER {table}_no_truncate ON {table}"))
        else:
            for table in APPEND_ONLY_TABLES:
                connection.execute(text(f"DROP TRIGGER {table}_no_update"))
                connection.execute(text(f"DROP TRIGGER {table}_no_delete"))


def checkpoint_lines(settings: Settings) -> list[dict[str, Any]]:
    path = settings.resolved_checkpoint_file
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Clock:
    """A clock the test moves by hand (no sleeping); each reading is a millisecond later, so
    that events keep their order."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 12, 1, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def with_clock(client: TestClient, clock: Callable[[], datetime]) -> None:
    client.app.state.runtime.audit_log.clock = clock  # type: ignore[attr-defined]


def drain(client: TestClient) -> None:
    """Wait for the work started after appends (alerts, checkpoints) in the app's loop."""
    client.portal.call(client.app.state.runtime.drain)  # type: ignore[attr-defined,union-attr]
