"""``Idempotency-Key``: a POS terminal that retries after a timeout gets the first answer.

We keep the caller, the key, a keyed fingerprint of the body and the id of what was created —
never the response itself (it would be personal data at rest in the clear)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import BadHeader, Conflict
from app.models import IdempotentRequest

_KEY = re.compile(r"[A-Za-z0-9._:-]{8,128}")


class IdempotencyMismatch(Conflict):
    slug, title = "idempotency-mismatch", "Idempotency key reused"
    default_detail = "This Idempotency-Key was used before with a different request."


def parse_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not _KEY.fullmatch(value):
        raise BadHeader("Idempotency-Key must be 8-128 letters, digits or . _ : -")
    return value


def fingerprint(secret: bytes, route: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    message = route.encode() + b"\n" + canonical.encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


async def replayed_resource(
    session: AsyncSession, *, caller_id: str, key: str, route: str, print_: str
) -> str | None:
    """The id created by the first request with this key, or None if there was none."""
    row = await session.get(IdempotentRequest, (caller_id, key))
    if row is None:
        return None
    if row.route != route or not hmac.compare_digest(row.fingerprint, print_):
        raise IdempotencyMismatch()
    return row.resource_id


class IdempotencyInProgress(Conflict):
    slug, title = "idempotency-in-progress", "Request in progress"
    default_detail = "A request with this Idempotency-Key is being handled; retry shortly."


async def remember(
    session: AsyncSession,
    *,
    caller_id: str,
    key: str,
    route: str,
    print_: str,
    resource_id: str,
) -> None:
    """Keep the key with what it created; a simultaneous twin of the request loses here."""
    session.add(
        IdempotentRequest(
            caller_id=caller_id, key=key, route=route, fingerprint=print_, resource_id=resource_id
        )
    )
    try:
        await session.flush()
    except IntegrityError as exc:
        raise IdempotencyInProgress() from exc
