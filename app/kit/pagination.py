"""Keyset pagination for lists ordered newest first: ``{"items": [...], "next": cursor}``.

The cursor is the (time, id) of the last item shown, opaque to callers (base64url); a cursor that
does not decode is a ``422``. Every list of the service (administration, visits, …) pages this
way: the repository applies ``newest_first`` to its statement, the service cuts the page with
``cut_page``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, TypeVar, TypeVarTuple

from fastapi import Depends, Query
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from app.errors import ValidationFailed

_ID = re.compile(r"[0-9a-f-]{36}")
MAX_CURSOR_LENGTH = 200
MAX_LIMIT = 500

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True, slots=True)
class Keyset:
    at: datetime
    id: str


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: Keyset | None


def encode_cursor(keyset: Keyset) -> str:
    raw = f"{keyset.at.isoformat()}|{keyset.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Keyset:
    invalid = ValidationFailed("The cursor is not valid; pass the `next` value of a list.")
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, keyset_id = raw.partition("|")
        at = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid from exc
    # A naive time would reach the database layer as a 503, not a 422.
    if at.tzinfo is None or not _ID.fullmatch(keyset_id):
        raise invalid
    return Keyset(at=at, id=keyset_id)


def page_request(limit: int, cursor: str | None) -> PageRequest:
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor is not None else None)


async def _page(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_CURSOR_LENGTH, description="The `next` value of the previous page."),
    ] = None,
) -> PageRequest:
    return page_request(limit, cursor)


PageDep = Annotated[PageRequest, Depends(_page)]


def newest_first(
    statement: Select[*Ts],
    at: InstrumentedAttribute[datetime],
    id_: InstrumentedAttribute[str],
    page: PageRequest,
) -> Select[*Ts]:
    """One more row than the page holds (to know whether a next page exists), newest first,
    strictly after the keyset of the previous page."""
    statement = statement.order_by(at.desc(), id_.desc()).limit(page.limit + 1)
    if page.after is not None:
        statement = statement.where(
            or_(at < page.after.at, and_(at == page.after.at, id_ < page.after.id))
        )
    return statement


def cut_page(
    rows: Sequence[T], page: PageRequest, keyset: Callable[[T], Keyset]
) -> tuple[list[T], str | None]:
    """The rows of this page and the cursor of the next (``None`` on the last page)."""
    shown = list(rows[: page.limit])
    if len(rows) <= page.limit:
        return shown, None
    return shown, encode_cursor(keyset(shown[-1]))
