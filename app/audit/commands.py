"""``shopvault audit export``: the log, shipped out (verification: ``integrity.verify_log``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.audit import auditor_repository as repository
from app.audit.events import Action, Actor, EventDraft
from app.audit.service import decode_cursor, encode_cursor, event_out
from app.uow import UnitOfWork

# Events are exported once they are this old: an event's time is taken just before its
# transaction commits, so a younger event may still be joined by an older one committing late.
EXPORT_SETTLE = timedelta(minutes=5)
EXPORT_LIMIT = 10_000


@dataclass(frozen=True)
class Export:
    lines: list[str]
    cursor: str | None


async def export(
    uow: UnitOfWork,
    actor: Actor,
    *,
    since: str | None,
    now: datetime,
    settle: timedelta = EXPORT_SETTLE,
    limit: int = EXPORT_LIMIT,
) -> Export:
    """Events after the cursor (oldest first) as JSON lines with the API's fields, and the
    cursor to resume from. The export is itself recorded (with the read, before it is shown)."""
    after = decode_cursor(since, (datetime, str)) if since is not None else None
    rows = await repository.events_for_export(
        uow.session,
        after=(after[0], after[1]) if after else None,
        until=now - settle,
        limit=limit,
    )
    uow.record(EventDraft(actor=actor, action=Action.EXPORT, resource="access-events/export"))
    lines = [json.dumps(event_out(row).model_dump(mode="json"), ensure_ascii=False) for row in rows]
    cursor = encode_cursor(rows[-1].event.at, rows[-1].event.id) if rows else since
    return Export(lines, cursor)
