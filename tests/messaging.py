"""Building blocks for message tests: a clock the message rules obey, valid variables for every
template, sending through the HTTP API, and reading the outbox as committed."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.messages import router as messages_router
from app.models import Customer, Message, Visit
from app.runtime import Runtime
from tests.world import purpose

TOKYO = ZoneInfo("Asia/Tokyo")
Result = TypeVar("Result")

VARIABLES: dict[str, dict[str, Any]] = {
    "repair_ready": {"device_model": "Galaxy S24", "store_name": "渋谷店"},
    "repair_status": {
        "device_model": "Galaxy S24",
        "status_note": "部品の入荷待ちです",
        "expected_date": "2026-12-10",
        "store_name": "渋谷店",
    },
    "appointment_change": {
        "appointment_date": "2026-12-05",
        "appointment_time": "14:30",
        "store_name": "渋谷店",
    },
    "inquiry_follow_up": {
        "inquiry_date": "2026-11-20",
        "summary": "ご依頼の機種変更の件、在庫をご用意できました。",
        "store_name": "渋谷店",
    },
    "payment_reminder": {"due_date": "2026-12-15", "amount": 12800},
    "contract_guidance": {
        "procedure": "料金プランの変更",
        "deadline": "2026-12-20",
        "store_name": "渋谷店",
    },
    "store_closure": {"store_name": "渋谷店", "closure_date": "2027-01-31"},
    "service_outage": {"outage_date": "2026-12-01", "start_time": "02:00", "end_time": "04:30"},
    "campaign": {
        "campaign_name": "冬のスマホ応援キャンペーン",
        "end_date": "2027-01-15",
        "store_name": "渋谷店",
    },
}
# One template of each category.
BY_CATEGORY = {
    "important_notice": "store_closure",
    "procedure_guidance": "contract_guidance",
    "support": "repair_ready",
    "appointment": "appointment_change",
    "marketing": "campaign",
}

_keys = itertools.count(1)


def tokyo(
    day_offset: int, hour: int, minute: int = 0, *, after: datetime | None = None
) -> datetime:
    """A time in Japan ``day_offset`` days after the next such hour following ``after`` (default:
    now), as UTC: always in the future, so that visits opened now are in its past."""
    base = (after or datetime.now(UTC)).astimezone(TOKYO)
    moment = base.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if moment <= base:
        moment += timedelta(days=1)
    return (moment + timedelta(days=day_offset)).astimezone(UTC)


class FakeClock:
    """The message rules' clock: a fixed time, or the real one when ``now`` is None."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now or datetime.now(UTC)


@contextmanager
def clock_at(client: TestClient, now: datetime | None) -> Iterator[FakeClock]:
    clock = FakeClock(now)
    overrides = client.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[messages_router.clock] = lambda: clock
    try:
        yield clock
    finally:
        overrides.pop(messages_router.clock, None)


def idempotency_key() -> str:
    return f"test-message-{next(_keys):06d}"


def send(
    client: TestClient,
    headers: dict[str, str],
    customer_id: str,
    template: str = "repair_ready",
    channel: str = "sms",
    *,
    variables: dict[str, Any] | None = None,
    key: str | None = None,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    payload = body or {
        "channel": channel,
        "template": template,
        "variables": VARIABLES[template] if variables is None else variables,
    }
    return client.post(
        f"/customers/{customer_id}/messages",
        json=payload,
        headers={**headers, "Idempotency-Key": key or idempotency_key()},
    )


def with_purpose(
    headers: dict[str, str], name: str, *, visit: str | None = None, reason: str | None = None
) -> dict[str, str]:
    return purpose(headers, name, visit=visit, reason=reason)


def messages(db: Engine, customer_id: str | None = None) -> list[Message]:
    with Session(db) as session:
        statement = select(Message).order_by(Message.created_at, Message.id)
        if customer_id is not None:
            statement = statement.where(Message.customer_id == customer_id)
        rows = list(session.scalars(statement).all())
        for row in rows:
            session.expunge(row)
        return rows


def message(db: Engine, message_id: str) -> Message:
    with Session(db) as session:
        row = session.get(Message, message_id)
        assert row is not None
        session.expunge(row)
        return row


def set_visit_times(db: Engine, visit_id: str, **values: datetime | None) -> None:
    with db.begin() as connection:
        connection.execute(update(Visit).where(Visit.id == visit_id).values(**values))


def set_customer(db: Engine, customer_id: str, **values: Any) -> None:
    with db.begin() as connection:
        connection.execute(update(Customer).where(Customer.id == customer_id).values(**values))


def in_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[Result]]) -> Result:
    """Run ``work`` on the worker's side: its own runtime (engine, keys), its own event loop."""

    async def run() -> Result:
        runtime = Runtime.build(settings)
        try:
            return await work(runtime)
        finally:
            await runtime.engine.dispose()

    return asyncio.run(run())
