"""Appending to the access log: the only writer of ``access_event`` and ``audit_chain``.

Each process appends to chains of its own (see ``docs/audit-chain.md``): it keeps their heads in
memory, so sealing needs no read, and no other process ever waits for them. An append holds its
chain's (in-process) lock from sealing until the COMMIT has answered; a chain whose commit failed
is retired, because nobody can tell whether its last event landed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ColumnElement, bindparam, insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.chain import ENCODING_VERSION, GENESIS_HASH, AuditKeys, seal
from app.audit.events import EventDraft
from app.db import DRIVER_DIALECT, execute_on_driver, runs_on_driver
from app.models import AccessEvent, AccessEventCustomer, AuditChain, AuditChainRegistry
from app.models.base import new_id, utcnow

log = logging.getLogger("shopvault.audit")

# Told of every committed append (the sealed rows, customer_ids included); must not block.
AppendListener = Callable[[Sequence[dict[str, Any]]], None]

CHAINS_PER_PROCESS = 8


@dataclass(frozen=True)
class Appended:
    """One request's events, with the request id and time they are stamped with."""

    drafts: Sequence[EventDraft]
    request_id: str
    at: datetime


@dataclass(eq=False)
class _Chain:
    name: str
    seq: int = 0
    head: str = GENESIS_HASH
    retired: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _rows(
    chain: _Chain,
    drafts: Sequence[EventDraft],
    key: bytes,
    request_id: str,
    at: datetime,
    *,
    after: tuple[int, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, str]:
    """Seal the drafts after the chain's head (or ``after``: the seq and hash of an event not
    yet committed); the chain itself is not advanced yet."""
    seq, prev_hash = after if after is not None else (chain.seq, chain.head)
    rows: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for draft in drafts:
        seq += 1
        event: dict[str, Any] = {
            "id": new_id(),
            "chain": chain.name,
            "seq": seq,
            "at": at,
            "actor": draft.actor.name,
            "actor_id": draft.actor.id,
            "role": draft.actor.role,
            "store": draft.actor.store,
            "terminal": draft.actor.terminal,
            "purpose": draft.purpose,
            "reason": draft.reason,
            "action": draft.action.value,
            "resource": draft.resource,
            "customer_ids": list(draft.customer_ids),
            "fields": sorted(draft.fields),
            "changed_fields": (
                sorted(draft.changed_fields) if draft.changed_fields is not None else None
            ),
            "result_count": draft.result_count,
            "outcome": draft.outcome.value,
            "denial": draft.denial,
            "review_required": draft.review_required,
            "request_id": request_id,
            "encoding_version": ENCODING_VERSION,
            "presence_method": draft.presence_method,
            "subject_request_id": draft.subject_request_id,
            "count": draft.count,
        }
        event["prev_hash"] = prev_hash
        event["hash"] = prev_hash = seal(key, prev_hash, event)
        links.extend(
            {"event_id": event["id"], "position": i, "customer_id": customer_id}
            for i, customer_id in enumerate(event["customer_ids"])
        )
        rows.append(event)
    return rows, links, seq, prev_hash


_EVENT_COLUMNS = frozenset(AccessEvent.__table__.columns.keys())


def _event_row(event: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in event.items() if name in _EVENT_COLUMNS}


def _bound_values(model: type[Any], prefix: str) -> dict[str, Any]:
    return {
        column.name: bindparam(f"{prefix}{column.name}", type_=column.type)
        for column in model.__table__.columns
    }


def _head_upsert(dialect_insert: Any) -> Any:
    upsert = dialect_insert(AuditChain).values(
        chain=bindparam("h_chain"),
        seq=bindparam("h_seq"),
        head_hash=bindparam("h_hash"),
        mac=bindparam("h_mac"),
    )
    return upsert.on_conflict_do_update(
        index_elements=[AuditChain.chain],
        set_={
            "seq": upsert.excluded.seq,
            "head_hash": upsert.excluded.head_hash,
            "mac": upsert.excluded.mac,
        },
    )


_REGISTER = insert(AuditChainRegistry).values(_bound_values(AuditChainRegistry, "r_"))


_SQLITE_HEAD_UPSERT = _head_upsert(sqlite.insert)


def _pg_type(column: ColumnElement[Any]) -> str:
    return str(column.type.compile(dialect=DRIVER_DIALECT))


# Every name and type below comes from the models, never from a value.
def _unnest_insert(table: Any, first: int) -> tuple[str, list[str]]:
    """``INSERT … SELECT * FROM unnest($n::type[], …)``: any number of rows as one array per
    column, so that one prepared statement serves every batch size."""
    columns = list(table.columns)
    arrays = ", ".join(f"${first + i}::{_pg_type(column)}[]" for i, column in enumerate(columns))
    names = ", ".join(column.name for column in columns)
    return f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest({arrays})", [  # noqa: S608
        column.name for column in columns
    ]


_EVENT_INSERT, _EVENT_NAMES = _unnest_insert(AccessEvent.__table__, 1)
_LINK_INSERT, _LINK_NAMES = _unnest_insert(AccessEventCustomer.__table__, 1 + len(_EVENT_NAMES))
_HEAD_AT = 1 + len(_EVENT_NAMES) + len(_LINK_NAMES)
_JSON_COLUMNS = frozenset(
    column.name for column in AccessEvent.__table__.columns if isinstance(column.type, JSON)
)


@functools.cache
def _driver_append(register: bool) -> str:
    """The whole append in one statement for the driver: the events, their customer links,
    the chain's registration (with its first event) and its head. Run outside a transaction it
    is one (it commits or fails whole); inside the session's, it commits with the data."""
    h = _HEAD_AT
    parts = [f"events AS ({_EVENT_INSERT})", f"links AS ({_LINK_INSERT})"]
    if register:
        parts.append(
            "registration AS (INSERT INTO audit_chain_registry (chain, registered_at, mac)"  # noqa: S608
            f" VALUES (${h}::varchar, ${h + 4}::timestamptz, ${h + 5}::varchar))"
        )
    return (
        f"WITH {', '.join(parts)} INSERT INTO audit_chain (chain, seq, head_hash, mac)"  # noqa: S608
        f" VALUES (${h}::varchar, ${h + 1}::bigint, ${h + 2}::varchar, ${h + 3}::varchar)"
        " ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq,"
        " head_hash = excluded.head_hash, mac = excluded.mac"
    )


def _column_arrays(
    rows: Sequence[dict[str, Any]], names: Sequence[str], json_columns: frozenset[str]
) -> list[list[Any]]:
    """One list per column; JSON values as the text SQLAlchemy writes (``json.dumps``'
    defaults), which verification reads back."""
    arrays: list[list[Any]] = []
    for name in names:
        values = [row.get(name) for row in rows]
        if name in json_columns:
            values = [None if value is None else json.dumps(value) for value in values]
        arrays.append(values)
    return arrays


def _macs(
    keys: AuditKeys, chain: str, rows: list[dict[str, Any]], seq: int, head: str
) -> tuple[str, tuple[datetime, str] | None]:
    """The head's MAC, and the chain's registration (its time and MAC) when these rows start
    the chain: what either way of writing an append stores beside the events."""
    head_mac = keys.head_mac(chain, seq, head)
    if rows[0]["seq"] != 1:
        return head_mac, None
    at = rows[0]["at"]
    return head_mac, (at, keys.registry_mac(chain, at))


async def _write_on_driver(
    session: AsyncSession,
    keys: AuditKeys,
    chain: str,
    rows: list[dict[str, Any]],
    links: list[dict[str, Any]],
    seq: int,
    head: str,
) -> None:
    head_mac, registration = _macs(keys, chain, rows, seq, head)
    args: list[Any] = [
        *_column_arrays(rows, _EVENT_NAMES, _JSON_COLUMNS),
        *_column_arrays(links, _LINK_NAMES, frozenset()),
        chain,
        seq,
        head,
        head_mac,
        *(registration or ()),
    ]
    await execute_on_driver(session, _driver_append(registration is not None), args)


async def _write(
    session: AsyncSession,
    keys: AuditKeys,
    chain: str,
    rows: list[dict[str, Any]],
    links: list[dict[str, Any]],
    seq: int,
    head: str,
) -> None:
    """The append through SQLAlchemy (SQLite; PostgreSQL takes ``_write_on_driver``)."""
    connection = await session.connection()
    head_mac, registration = _macs(keys, chain, rows, seq, head)
    params = {"h_chain": chain, "h_seq": seq, "h_hash": head, "h_mac": head_mac}
    if registration is not None:
        at, mac = registration
        params.update({"r_chain": chain, "r_registered_at": at, "r_mac": mac})
        await connection.execute(_REGISTER, params)
    await connection.execute(insert(AccessEvent), [_event_row(row) for row in rows])
    if links:
        await connection.execute(insert(AccessEventCustomer), links)
    await connection.execute(_SQLITE_HEAD_UPSERT, params)


class AuditLog:
    """This process's chains of the access log."""

    def __init__(
        self,
        keys: AuditKeys,
        *,
        chains: int | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._keys = keys
        self._tag = secrets.token_hex(6)
        self._generation = 0
        self._chains = [self._fresh_chain() for _ in range(chains or CHAINS_PER_PROCESS)]
        # The time events are stamped with; tests replace it to control time-dependent rules.
        self.clock = clock
        self._listeners: list[AppendListener] = []

    def now(self) -> datetime:
        return self.clock()

    def listen(self, listener: AppendListener) -> None:
        self._listeners.append(listener)

    def stop_listening(self, listener: AppendListener) -> None:
        self._listeners.remove(listener)

    def _committed(self, rows: Sequence[dict[str, Any]]) -> None:
        for listener in self._listeners:
            try:
                listener(rows)
            except Exception:  # a monitor's failure must never fail the request
                log.exception("append listener failed")

    def _fresh_chain(self) -> _Chain:
        self._generation += 1
        return _Chain(name=f"{self._tag}.{self._generation}")

    def _pick(self) -> _Chain:
        for chain in self._chains:
            if not chain.lock.locked():
                return chain
        return secrets.choice(self._chains)

    def _seal(
        self, chain: _Chain, groups: Sequence[Appended]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, str]:
        rows: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        seq, head = chain.seq, chain.head
        for group in groups:
            sealed, linked, seq, head = _rows(
                chain, group.drafts, self._keys.chain, group.request_id, group.at, after=(seq, head)
            )
            rows += sealed
            links += linked
        return rows, links, seq, head

    def _retire(self, chain: _Chain) -> None:
        chain.retired = True
        self._chains[self._chains.index(chain)] = self._fresh_chain()

    async def commit(
        self,
        session: AsyncSession,
        drafts: Sequence[EventDraft],
        *,
        request_id: str,
        at: datetime,
    ) -> None:
        """Append the drafts (sealed) and commit the session's transaction with them."""
        await self.commit_groups(session, [Appended(drafts, request_id, at)])

    async def commit_groups(self, session: AsyncSession, groups: Sequence[Appended]) -> None:
        """Append the events of several requests, one after another on one chain, and commit
        the session's transaction with them."""
        if not any(group.drafts for group in groups):
            await session.commit()
            return
        # Begin first: on SQLite this takes the write lock, so that no request ever holds a
        # chain lock while it waits for the database's lock.
        await session.connection()
        while True:
            chain = self._pick()
            async with chain.lock:
                if chain.retired:
                    continue
                rows, links, seq, head = self._seal(chain, groups)
                write = _write_on_driver if runs_on_driver(session) else _write
                try:
                    await write(session, self._keys, chain.name, rows, links, seq, head)
                    await session.commit()
                except BaseException:
                    self._retire(chain)
                    raise
                chain.seq, chain.head = seq, head
                break
        self._committed(rows)
