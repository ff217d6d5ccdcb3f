"""``Idempotency-Key``: a POS terminal that retries after a timeout gets the first answer.

One sequence for every route that takes the header: fingerprint the request, replay the first
answer if the key was used with the same request (a different request with the same key is a
``409``), otherwise do the work and remember the key with what it created. We keep the caller,
the key, a keyed fingerprint of the request and the id of what was created — never the response
itself (it would be personal data at rest in the clear). The fingerprint key is derived for this
use alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import BadHeader, Conflict
from app.models import IdempotentRequest

_KEY = re.compile(r"[A-Za-z0-9._:-]{8,128}")


class IdempotencyMismatch(Conflict):
    slug, title = "idempotency-mismatch", "Idempotency key reused"
    default_detail = "This Idempotency-Key was used before with a different request."


class IdempotencyInProgress(Conflict):
    slug, title = "idempotency-in-progress", "Request in progress"
    default_detail = "A request with this Idempotency-Key is being handled; retry shortly."


def derive_fingerprint_key(index_key: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"shopvault/idempotency/v1"
    ).derive(index_key)


def parse_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not _KEY.fullmatch(value):
        raise BadHeader("Idempotency-Key must be 8-128 letters, digits or . _ : -")
    return value


def fingerprint(secret: bytes, route: str, request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    message = route.encode() + b"\n" + canonical.encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class IdempotentCall:
    """One request under an (optional) idempotency key."""

    caller_id: str
    key: str | None
    route: str
    print_: str

    async def first_answer(self, session: AsyncSession) -> str | None:
        """The id created by the first request with this key, or None if there was none."""
        if self.key is None:
            return None
        row = await session.get(IdempotentRequest, (self.caller_id, self.key))
        if row is None:
            return None
        if row.route != self.route or not hmac.compare_digest(row.fingerprint, self.print_):
            raise IdempotencyMismatch()
        return row.resource_id

    async def remember(self, session: AsyncSession, resource_id: str) -> None:
        """Keep the key with what it created; a simultaneous twin of the request loses here."""
        if self.key is None:
            return
        session.add(
            IdempotentRequest(
                caller_id=self.caller_id,
                key=self.key,
                route=self.route,
                fingerprint=self.print_,
                resource_id=resource_id,
            )
        )
        try:
            await session.flush()
        except IntegrityError as exc:
            raise IdempotencyInProgress() from exc


def idempotent_call(
    secret: bytes, *, caller_id: str, key: str | None, route: str, request: dict[str, Any]
) -> IdempotentCall:
    return IdempotentCall(caller_id, key, route, fingerprint(secret, route, request))
