"""Keyset cursors for lists ordered newest first: the (created_at, id) of the last item shown.

The cursor is opaque to callers (base64url); a cursor that does not decode is a ``422``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime

from app.errors import ValidationFailed

_ID = re.compile(r"[0-9a-f-]{36}")
MAX_CURSOR_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Keyset:
    created_at: datetime
    id: str


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: Keyset | None


def encode_cursor(keyset: Keyset) -> str:
    raw = f"{keyset.created_at.isoformat()}|{keyset.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Keyset:
    invalid = ValidationFailed("The cursor is not valid; pass the `next` value of a list.")
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, keyset_id = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error) as exc:
        raise invalid from exc
    if created_at.tzinfo is None or not _ID.fullmatch(keyset_id):
        raise invalid
    return Keyset(created_at=created_at, id=keyset_id)


def page_request(limit: int, cursor: str | None) -> PageRequest:
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor is not None else None)
