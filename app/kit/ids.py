"""Ids as callers send them: canonical UUID strings, or nothing we copy anywhere."""

from __future__ import annotations

import uuid

MALFORMED_ID = "(malformed-id)"


def canonical_id(value: str | None) -> str | None:
    """The canonical form of a UUID, or ``None`` for anything else."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def resource_of(collection: str, raw_id: str, suffix: str = "") -> str:
    """An event's resource names the canonical id asked for. A malformed id is caller input of
    any length and content (a phone number typed into the URL): it is never copied into the log."""
    return f"{collection}/{canonical_id(raw_id) or MALFORMED_ID}{suffix}"
