"""Reading what a request committed to the access log (and how many rows a table holds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.models import AccessEvent, AccessEventCustomer, Base


@dataclass(frozen=True)
class LoggedEvent:
    row: AccessEvent
    customer_ids: list[str]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, name)


def events_of(db: Engine, response: httpx.Response) -> list[LoggedEvent]:
    """The events committed by the request that gave ``response`` (by its request id)."""
    request_id = response.headers["x-request-id"]
    with Session(db) as session:
        rows = session.scalars(
            select(AccessEvent)
            .where(AccessEvent.request_id == request_id)
            .order_by(AccessEvent.seq)
        ).all()
        result = []
        for row in rows:
            ids = session.scalars(
                select(AccessEventCustomer.customer_id)
                .where(AccessEventCustomer.event_id == row.id)
                .order_by(AccessEventCustomer.position)
            ).all()
            session.expunge(row)
            result.append(LoggedEvent(row, list(ids)))
    return result


def event_of(db: Engine, response: httpx.Response) -> LoggedEvent:
    """The one event the request committed."""
    events = events_of(db, response)
    assert len(events) == 1, f"expected one access event, found {len(events)}"
    return events[0]


def count_rows(db: Engine, model: type[Base]) -> int:
    with Session(db) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0
