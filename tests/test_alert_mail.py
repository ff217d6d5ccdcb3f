"""Alerts reach people: the worker emails the compliance mailbox once per new alert, from the
official sender, with no customer data and no employee name (SPEC: Audit and monitoring)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message as EmailMessage
from email.policy import default
from pathlib import Path

from sqlalchemy import Engine, insert, select

from app.config import Settings
from app.messages.delivery import FileMail, FileSms
from app.messages.outbox import Worker
from app.models import Alert
from app.runtime import Runtime
from tests import cast
from tests.conftest import SettingsFactory
from tests.messaging import in_runtime

ALERT_BOX = "compliance@example.jp"


def _open_alert(db: Engine) -> str:
    now = datetime.now(UTC)
    alert_id = str(uuid.uuid4())
    with db.begin() as connection:
        connection.execute(
            insert(Alert).values(
                id=alert_id,
                rule="bulk_read",
                actor=cast.SALES.login,
                actor_key=cast.SALES.login,
                role="sales",
                store="S001",
                subject="",
                window_start=now,
                status="open",
                first_at=now,
                last_at=now,
                count=21,
            )
        )
    return alert_id


def _run_worker(settings: Settings, outbox: Path) -> int:
    async def work(runtime: Runtime) -> int:
        worker = Worker(
            runtime,
            mail=FileMail(outbox / "mail", settings.email_sender),
            sms=FileSms(outbox / "sms", None),
        )
        return await worker.run_once()

    return in_runtime(settings, work)


def _emails(outbox: Path) -> list[EmailMessage]:
    directory = outbox / "mail"
    if not directory.exists():
        return []
    return [message_from_bytes(p.read_bytes(), policy=default) for p in sorted(directory.iterdir())]


def test_each_new_alert_is_emailed_once_without_names(
    make_settings: SettingsFactory, db: Engine, tmp_path: Path
) -> None:
    settings = make_settings(alert_email=ALERT_BOX, email_sender="noreply@shop.example.jp")
    alert_id = _open_alert(db)
    _run_worker(settings, tmp_path)
    (email,) = _emails(tmp_path)
    assert email["To"] == ALERT_BOX
    assert email["From"] == "noreply@shop.example.jp"
    text = email.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "bulk_read" in text and "S001" in text and "sales" in text and "21" in text
    assert f"/alerts/{alert_id}" in text
    assert cast.SALES.login not in email.as_string()
    with db.connect() as connection:
        notified = connection.execute(
            select(Alert.notified_at).where(Alert.id == alert_id)
        ).scalar()
    assert notified is not None
    _run_worker(settings, tmp_path)
    assert len(_emails(tmp_path)) == 1  # told once


def test_without_an_alert_mailbox_nothing_is_sent(
    make_settings: SettingsFactory, db: Engine, tmp_path: Path
) -> None:
    _open_alert(db)
    _run_worker(make_settings(), tmp_path)
    assert _emails(tmp_path) == []
