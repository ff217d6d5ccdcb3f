"""Verification of the access log: every chain whole, sealed, registered, and as long as the
newest checkpoint says.

On PostgreSQL events are read by COPY with their canonical encoding built by the query from the
stored columns; on SQLite rows are streamed as plain tuples (no ORM objects) and each event's
encoding is built straight from them. Verification reads one consistent snapshot (heads and
events together).

Problems, by name:

- ``hash-mismatch``: an event's seal does not match its content, its link to the previous event
  is broken, or it differs from the hash a checkpoint recorded for it;
- ``seq-gap``: a chain's sequence skips numbers (an event was deleted);
- ``tail-truncated``: a chain ends before its head or its newest checkpoint, or its head is
  missing or not authenticated;
- ``chain-missing``: a chain that is registered, or named by a checkpoint, has no events;
- ``chain-unregistered``: a chain in the log with no authenticated registration.

A chain whose oldest events were pruned by retention starts at its signed anchor (the first kept
event's seq and prev_hash, from a ``prune`` checkpoint): events before it are neither expected
nor checked.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import pickle
import queue
import secrets
import selectors
import subprocess
import sys
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import Connection, text

from app.audit.chain import (
    ENCODING_VERSION,
    GENESIS_HASH,
    HASHED_FIELDS_BY_VERSION,
    AuditKeys,
    seal_encoded,
    sealer,
)
from app.audit.checkpoints import Fold, Head

HASH_MISMATCH = "hash-mismatch"
SEQ_GAP = "seq-gap"
TAIL_TRUNCATED = "tail-truncated"
CHAIN_MISSING = "chain-missing"
CHAIN_UNREGISTERED = "chain-unregistered"

MAX_PROBLEMS = 100
BATCH = 5_000
PREFETCH = 4


@dataclass(frozen=True, slots=True)
class Finding:
    problem: str
    chain: str
    seq: int | None = None
    event_id: str | None = None
    at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "chain": self.chain,
            "seq": self.seq,
            "event_id": self.event_id,
        }


@dataclass
class Verification:
    full: bool
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    more_problems: int = 0
    # The committed heads that were verified (what a checkpoint after it records).
    heads: dict[str, Head] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_bad_id(self) -> str | None:
        with_events = [f for f in self.findings if f.event_id is not None]
        if not with_events:
            return None
        return min(with_events, key=lambda f: (f.at or "", f.chain, f.seq or 0)).event_id

    def report(self, finding: Finding) -> None:
        if len(self.findings) >= MAX_PROBLEMS:
            self.more_problems += 1
            return
        if finding not in self.findings:
            self.findings.append(finding)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_bad_id": self.first_bad_id,
            "problems": [finding.as_dict() for finding in self.findings],
        }


# --- reading ------------------------------------------------------------------------------------

# The columns in a fixed order; ``at`` as the canonical text.
_COLUMNS = (
    "id, chain, seq, {at}, actor, actor_id, role, store, terminal, purpose, reason, action, "
    "resource, {fields}, {changed}, result_count, outcome, denial, review_required, request_id, "
    "encoding_version, presence_method, subject_request_id, count, prev_hash, hash, {links}"
)
_POSTGRES_SELECT = _COLUMNS.format(
    at="to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    fields="e.fields::text",
    changed="e.changed_fields::text",
    links="(SELECT array_agg(l.customer_id ORDER BY l.position) "
    "FROM access_event_customer l WHERE l.event_id = e.id)",
)
_SQLITE_SELECT = _COLUMNS.format(
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, see UTCDateTime).
    at="replace(e.at, ' ', 'T') || 'Z'",
    fields="e.fields",
    changed="e.changed_fields",
    links="(SELECT json_group_array(customer_id) FROM (SELECT l.customer_id "
    "FROM access_event_customer l WHERE l.event_id = e.id ORDER BY l.position))",
)

# Loose index scan: the distinct chains in a few index probes each, however many events.
_CHAINS_WITH_EVENTS = text(
    "WITH RECURSIVE c(chain) AS ("
    " SELECT min(chain) FROM access_event"
    " UNION ALL"
    " SELECT (SELECT min(e.chain) FROM access_event e WHERE e.chain > c.chain)"
    " FROM c WHERE c.chain IS NOT NULL"
    ") SELECT chain FROM c WHERE chain IS NOT NULL"
)


def _postgres(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def _copies(connection: Connection) -> bool:
    """Whether events are read by COPY, encoded by the query (PostgreSQL, UTF-8 to the client)."""
    if not _postgres(connection):
        return False
    raw: Any = connection.connection.driver_connection
    return str(raw.info.encoding).replace("_", "-").lower() in ("utf-8", "utf8")


def _literal(connection: Connection, value: Any) -> str:
    """``value`` as an SQL literal, quoted by psycopg (COPY takes no parameters)."""
    from psycopg import sql as psycopg_sql

    raw: Any = connection.connection.driver_connection
    return str(psycopg_sql.Literal(value).as_string(raw))


_T = TypeVar("_T")
_S = TypeVar("_S", str, bytes)


def _prefetched(
    produce: Callable[[], Generator[list[_T], None, None]], name: str
) -> Generator[list[_T], None, None]:
    """The batches ``produce`` yields, made by a helper thread while this one checks the
    previous batch (the drivers release the GIL while they wait for the database). Closing the
    iterator stops the helper and waits for it."""
    batches: queue.Queue[list[_T] | BaseException | None] = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def fetch() -> None:
        try:
            with contextlib.closing(produce()) as produced:
                for batch in produced:
                    if stop.is_set():
                        break
                    batches.put(batch)
            batches.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            batches.put(exc)

    fetcher = threading.Thread(target=fetch, name=name, daemon=True)
    fetcher.start()
    try:
        while True:
            batch = batches.get()
            if batch is None:
                return
            if isinstance(batch, BaseException):
                raise batch
            yield batch
    finally:
        stop.set()
        while fetcher.is_alive():  # unblock a fetcher waiting on a full queue
            with contextlib.suppress(queue.Empty):
                batches.get(timeout=0.05)


def _stream(connection: Connection, sql: str, params: tuple[Any, ...]) -> Iterator[Sequence[Any]]:
    """Rows straight from the driver's cursor (server-side on PostgreSQL), fetched ahead."""
    raw: Any = connection.connection.driver_connection
    if _postgres(connection):
        cursor = raw.cursor(name=f"verify_{secrets.token_hex(6)}")
        cursor.itersize = BATCH
    else:
        cursor = raw.cursor()

    def fetched() -> Generator[list[Any], None, None]:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(BATCH):
            yield rows

    try:
        with contextlib.closing(_prefetched(fetched, "audit-verify-fetch")) as batches:
            for batch in batches:
                yield from batch
    finally:
        cursor.close()


# The statements are built from the constants above only (no caller input in their text).
def _all_events(connection: Connection) -> Iterator[Sequence[Any]]:
    select_list = _POSTGRES_SELECT if _postgres(connection) else _SQLITE_SELECT
    sql = f"SELECT {select_list} FROM access_event e ORDER BY e.chain, e.seq"  # noqa: S608
    return _stream(connection, sql, ())


def _chain_events(connection: Connection, chain: str, from_seq: int) -> Iterator[Sequence[Any]]:
    postgres = _postgres(connection)
    select_list = _POSTGRES_SELECT if postgres else _SQLITE_SELECT
    mark = "%s" if postgres else "?"
    sql = (
        f"SELECT {select_list} FROM access_event e "  # noqa: S608
        f"WHERE e.chain = {mark} AND e.seq >= {mark} ORDER BY e.seq"
    )
    return _stream(connection, sql, (chain, from_seq))


# --- sealing a row -------------------------------------------------------------------------------
#
# The canonical encoding (``app/audit/chain.py``: sorted keys, compact, UTF-8) built by a template
# straight from the row: much faster than a dict through the JSON encoder, and the same bytes
# (the tests compare the two on both backends).

_LIST = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_KEYS_BY_VERSION = {version: sorted(fields) for version, fields in HASHED_FIELDS_BY_VERSION.items()}
_TEMPLATES = {
    version: "{" + ",".join(f'"{key}":%s' for key in keys) + "}"
    for version, keys in _KEYS_BY_VERSION.items()
}


def _text(value: Any) -> str:
    return "null" if value is None else encode_basestring(value)


def _number(value: Any) -> str:
    return "null" if value is None else str(int(value))


def _json_list(value: Any) -> str:
    """A stored JSON list (text, or a driver's list) in the canonical form."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return _LIST(value)
    text = str(value)
    if text.isascii() and "\\" not in text and _separators_only(text, '", "', ",", '"'):
        # How SQLAlchemy wrote it (json.dumps' default separators); plain names only.
        compact = text.replace('", "', '","')
        if " " not in compact:
            return compact
    return _LIST(json.loads(text))


def _separators_only(value: _S, separator: _S, comma: _S, quote: _S) -> bool:
    """Whether every comma in a stored list of names without a backslash is a separator as
    ``json.dumps`` writes it, one between each two names: then compacting the separators gives
    the canonical list. (A name that is itself ", " looks like a separator, and compacting it
    would turn ``[", "]`` into the encoding of ``[","]``.)"""
    separators = value.count(separator)
    return separators == value.count(comma) == max(value.count(quote) // 2 - 1, 0)


def _encoded(row: Sequence[Any]) -> bytes | None:
    """The canonical encoding of a streamed row (None: an unknown encoding version or a value
    of the wrong type, which no sealed event has)."""
    (
        id_,
        chain,
        seq,
        at,
        actor,
        actor_id,
        role,
        store,
        terminal,
        purpose,
        reason,
        action,
        resource,
        fields,
        changed,
        result_count,
        outcome,
        denial,
        review_required,
        request_id,
        version,
        presence_method,
        subject_request_id,
        count,
        _prev,
        _hash,
        links,
    ) = row
    text_ = encode_basestring  # the columns that are never null are encoded directly
    review = "null" if review_required is None else ("true" if review_required else "false")
    try:
        if version == 2:
            values: tuple[str, ...] = (
                text_(action),
                "null" if actor is None else text_(actor),
                "null" if actor_id is None else text_(actor_id),
                text_(at),
                text_(chain),
                _json_list(changed),
                _number(count),
                "[]" if links is None else _json_list(links),
                "null" if denial is None else text_(denial),
                "2",
                _json_list(fields),
                text_(id_),
                text_(outcome),
                "null" if presence_method is None else text_(presence_method),
                "null" if purpose is None else text_(purpose),
                "null" if reason is None else text_(reason),
                text_(request_id),
                text_(resource),
                _number(result_count),
                review,
                "null" if role is None else text_(role),
                str(int(seq)),
                "null" if store is None else text_(store),
                "null" if subject_request_id is None else text_(subject_request_id),
                "null" if terminal is None else text_(terminal),
            )
            return (_TEMPLATES[2] % values).encode()
        if version == 1:
            if presence_method is not None or subject_request_id is not None or count is not None:
                return None  # version 1 does not seal them: an event of it has none
            values = (
                _text(action),
                _text(actor),
                _text(actor_id),
                _text(at),
                _text(chain),
                _json_list(changed),
                "[]" if links is None else _json_list(links),
                _text(denial),
                "1",
                _json_list(fields),
                _text(id_),
                _text(outcome),
                _text(purpose),
                _text(reason),
                _text(request_id),
                _text(resource),
                _number(result_count),
                review,
                _text(role),
                _number(seq),
                _text(store),
                _text(terminal),
            )
            return (_TEMPLATES[1] % values).encode()
    except (TypeError, ValueError):
        return None
    return None


# --- PostgreSQL: bare columns and links by COPY, the encoding built in Python --------------------
#
# Two ``COPY (SELECT …) TO STDOUT`` streams in the same snapshot, in the same order (chain, seq):
# the events' columns (text format; PostgreSQL only prints them, quoting the text ones) and
# their customer links by a plain join (no aggregation), each read by a connection of its own.
# Python merges them and builds each event's canonical encoding from the bytes with a template,
# when the line holds no backslash, no quote inside a text and JSON lists whose commas are all
# separators (the usual case). Such a line can still hold what JSON escapes (a control
# character) or a JSON list laid out differently: its template bytes are then no canonical
# encoding, so they cannot match the seal. A line that is not that simple, or whose seal does
# not match, is decoded and encoded by ``_encoded`` from its row, and only that encoding's seal
# decides. Nothing stored is trusted: every encoding is rebuilt from the columns on every
# verification.

_AT = "to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
# The text columns first, then the rest; the JSON columns last (their quotes are JSON's own:
# ``_feed_copy`` counts the quotes before them).
_COPY_TEXT = (
    "action",
    "actor",
    "actor_id",
    "at",
    "chain",
    "denial",
    "id",
    "outcome",
    "presence_method",
    "purpose",
    "reason",
    "request_id",
    "resource",
    "role",
    "store",
    "subject_request_id",
    "terminal",
)
_COPY_REST = (
    "seq",
    "count",
    "result_count",
    "review_required",
    "encoding_version",
    "prev_hash",
    "hash",
    "fields",
    "changed_fields",
)
# Each text column comes quoted by the query, and a NULL as ``null`` (the COPY's NULL string): the
# line's fields are then JSON values as they are, and the template fills them in with no NULL
# to replace. The id, chain and time come bare (the merge and the findings need them so); they
# are never NULL (the columns say so), so ``null`` there is that text: the template quotes them.
_BARE_TEXT = ("id", "chain", "at")
_N_QUOTED = len(_COPY_TEXT) - len(_BARE_TEXT)
_COPY_SELECT = ", ".join(
    _AT
    if column == "at"
    else f"e.{column}"
    if column in _BARE_TEXT
    else f"'\"' || e.{column} || '\"'"
    if column in _COPY_TEXT
    else "e.review_required::text"  # 'true' or 'false', as JSON writes them
    if column == "review_required"
    else f"e.{column}"
    for column in (*_COPY_TEXT, *_COPY_REST)
)
_COPY_OPTIONS = "(NULL 'null')"
_N_TEXT = len(_COPY_TEXT)
_INDEX = {column: i for i, column in enumerate((*_COPY_TEXT, *_COPY_REST))}
_I_VERSION, _I_FIELDS, _I_CHANGED = (
    _INDEX["encoding_version"],
    _INDEX["fields"],
    _INDEX["changed_fields"],
)
_CUSTOMERS = len(_INDEX)  # the customers' list is appended to a line's fields
_NULL = b"null"


def _line_template(version: int) -> tuple[bytes, Callable[[list[bytes]], tuple[bytes, ...]]]:
    """The encoding's keys, sorted, each with a ``%b`` for its value (quoted for the bare text
    columns; the version's number in place), and what picks the values from a line's fields."""
    parts, picks = [], []
    for key in _KEYS_BY_VERSION[version]:
        if key == "encoding_version":
            parts.append(f'"{key}":{version}')
            continue
        parts.append(f'"{key}":"%b"' if key in _BARE_TEXT else f'"{key}":%b')
        picks.append(_CUSTOMERS if key == "customer_ids" else _INDEX[key])
    return ("{" + ",".join(parts) + "}").encode(), itemgetter(*picks)


# Version 1 events go the general way (``_encoded``), which also holds the fields version 2
# added to be empty in them.
_LINE_TEMPLATES = {str(ENCODING_VERSION).encode(): _line_template(ENCODING_VERSION)}


def _plain_encoded(fields: list[bytes], customers: bytes) -> bytes | None:
    """The canonical encoding of a COPY line without a backslash whose texts hold no quote
    (None for an encoding version without a template, or a JSON list whose commas are not all
    separators). ``fields`` gets its JSON lists compacted and the customers' list appended.

    Not checked here, and not needed: a control character or a JSON list in another layout
    than SQLAlchemy's gives bytes that no canonical encoding has, so the seal does not match and
    the line is encoded again from its row (``_feed_copy``)."""
    template = _LINE_TEMPLATES.get(fields[_I_VERSION])
    if template is None:
        return None
    for i in (_I_FIELDS, _I_CHANGED):
        if not _separators_only(fields[i], b'", "', b",", b'"'):
            return None
        fields[i] = fields[i].replace(b'", "', b'","')
    fields.append(customers)
    text, pick = template
    return text % pick(fields)


# COPY's text format: a tab only between fields, a newline only after a row; these escapes
# (and ``\N`` for NULL) in a field that holds them.
_COPY_ESCAPES = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("v"): b"\v",
}


def _copy_field(value: bytes) -> bytes:
    """A COPY text field's bytes, its escapes undone."""
    if b"\\" not in value:
        return value
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == 0x5C and i + 1 < len(value):  # a backslash
            out += _COPY_ESCAPES.get(value[i + 1], value[i + 1 : i + 2])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return bytes(out)


def _copy_text(value: bytes) -> str | None:
    """A bare field (an event's id, chain, time, hashes, JSON lists; NULL as ``null``)."""
    return None if value == _NULL else _copy_field(value).decode()


def _copy_quoted(value: bytes) -> str | None:
    """A text field the query quoted (NULL as ``null``)."""
    return None if value == _NULL else _copy_field(value[1:-1]).decode()


def _copy_int(value: bytes) -> int | None:
    return None if value == _NULL else int(value)


def _row_encoded(fields: list[bytes], links: list[str]) -> bytes | None:
    """The canonical encoding of any COPY line, from its decoded row (``_encoded``)."""
    texts = {
        column: _copy_field(value).decode() if column in _BARE_TEXT else _copy_quoted(value)
        for column, value in zip(_COPY_TEXT, fields[:_N_TEXT], strict=True)
    }
    seq, count, result_count, review, version = fields[_N_TEXT : _N_TEXT + 5]
    row = (
        texts["id"],
        texts["chain"],
        _copy_int(seq),
        texts["at"],
        texts["actor"],
        texts["actor_id"],
        texts["role"],
        texts["store"],
        texts["terminal"],
        texts["purpose"],
        texts["reason"],
        texts["action"],
        texts["resource"],
        _copy_text(fields[_I_FIELDS]),
        _copy_text(fields[_I_CHANGED]),
        _copy_int(result_count),
        texts["outcome"],
        texts["denial"],
        None if review == _NULL else review == b"true",
        texts["request_id"],
        _copy_int(version),
        texts["presence_method"],
        texts["subject_request_id"],
        _copy_int(count),
        None,
        None,
        links,
    )
    return _encoded(row)


def _copy_lines(raw: Any, sql: str, options: str = "") -> Generator[list[bytes], None, None]:
    """The lines of ``COPY (sql) TO STDOUT options`` on a psycopg connection, in batches read
    ahead."""
    statement = f"COPY ({sql}) TO STDOUT {options}"
    return _prefetched(lambda: _copied(raw.pgconn, statement), "audit-verify-copy")


def _copied(pgconn: Any, statement: str) -> Generator[list[bytes], None, None]:
    """The rows of a ``COPY … TO STDOUT``, read from libpq through psycopg's ``pq`` layer.

    psycopg's own ``Copy`` runs a generator and a wait for each row: for the two streams of a
    million events that cost more CPU than building their encodings. The connection serves
    nothing else while the rows last; a stream closed early cancels the statement and reads
    what is left of it, so the connection is not left in the middle of a COPY."""
    from psycopg import errors, pq

    selector = selectors.DefaultSelector()
    selector.register(pgconn.socket, selectors.EVENT_READ)

    def wait() -> None:
        selector.select()
        pgconn.consume_input()

    def results() -> list[Any]:
        found: list[Any] = []
        while True:
            while pgconn.is_busy():
                wait()
            result = pgconn.get_result()
            if result is None:
                return found
            found.append(result)
            if result.status == pq.ExecStatus.COPY_OUT:
                return found

    def raise_for(result: Any) -> None:
        raise errors.error_from_result(result, encoding="utf-8")

    copying = finished = False
    try:
        pgconn.send_query(statement.encode())
        # psycopg keeps the connection non-blocking: a statement longer than the socket takes
        # at once is sent in parts (reading meanwhile, as libpq asks).
        while pgconn.flush():
            selector.modify(pgconn.socket, selectors.EVENT_READ | selectors.EVENT_WRITE)
            if any(events & selectors.EVENT_READ for _, events in selector.select()):
                pgconn.consume_input()
        selector.modify(pgconn.socket, selectors.EVENT_READ)
        started = results()
        if not started:
            raise RuntimeError("COPY did not start")
        if started[-1].status != pq.ExecStatus.COPY_OUT:
            raise_for(started[-1])
        copying = True
        batch: list[bytes] = []
        get = pgconn.get_copy_data
        while True:
            size, data = get(1)
            if size > 0:
                batch.append(bytes(data))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
            elif size == 0:
                wait()
            else:
                break
        copying = False
        if batch:
            yield batch
        done = results()
        finished = True
        for result in done:
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise_for(result)
    finally:
        if not finished:
            # Closed early or failed: the statement stopped and everything it left read, so
            # that the connection is not in the middle of a COPY.
            with contextlib.suppress(Exception):
                if copying:
                    pgconn.get_cancel().cancel()
                    while (size := pgconn.get_copy_data(1)[0]) >= 0:
                        if size == 0:
                            wait()
                results()  # the cancellation's error, read and dropped
        selector.close()


def _links(raw: Any, where: str) -> Generator[tuple[bytes, list[bytes], bool], None, None]:
    """(event id, its customer ids by position, whether none needs escaping) of the events
    ``where`` selects that have links, in the events' order (chain, seq); ids as COPY writes
    them."""
    sql = (
        "SELECT l.event_id, l.customer_id FROM access_event e "  # noqa: S608
        f"JOIN access_event_customer l ON l.event_id = e.id WHERE {where} "
        "ORDER BY e.chain, e.seq, l.position"
    )
    event: bytes | None = None
    ids: list[bytes] = []
    plain = True
    with contextlib.closing(_copy_lines(raw, sql)) as lines:
        for batch in lines:
            joined = b"".join(batch)
            batch_plain = not (b"\\" in joined or b'"' in joined)
            for line in batch:
                event_id, customer_id = line[:-1].split(b"\t")
                if event_id != event:
                    if event is not None:
                        yield event, ids, plain
                    event, ids, plain = event_id, [], True
                ids.append(customer_id)
                if not batch_plain:
                    plain = plain and not (b"\\" in customer_id or b'"' in customer_id)
    if event is not None:
        yield event, ids, plain


@contextlib.contextmanager
def _snapshot_twin(connection: Connection) -> Iterator[Any]:
    """A second psycopg connection reading this connection's snapshot (the links' stream)."""
    snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
    twin = connection.engine.connect().execution_options(isolation_level="REPEATABLE READ")
    try:
        with twin.begin():
            twin.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            # The links' join and sort in this backend alone: on a machine the verification
            # already keeps busy, parallel workers add CPU (gathering) and save no time.
            twin.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
            yield twin.connection.driver_connection
    finally:
        twin.close()


def _feed_copy(
    connection: Connection, twin: Any, checks: dict[str, _ChainCheck], key: bytes, where: str
) -> None:
    """The events ``where`` selects (by chain and seq), read by COPY with their links (by
    ``twin``, a connection in the same snapshot), each into its chain's check."""
    sql = f"SELECT {_COPY_SELECT} FROM access_event e WHERE {where} ORDER BY e.chain, e.seq"  # noqa: S608
    digest, tab, newline, backslash, null = sealer(key).digest, b"\t", b"\n", b"\\", _NULL
    i_chain, i_id, i_at = _INDEX["chain"], _INDEX["id"], _INDEX["at"]
    i_seq, i_prev, i_hash = _INDEX["seq"], _INDEX["prev_hash"], _INDEX["hash"]
    current: _ChainCheck | None = None
    current_chain: bytes | None = None
    raw: Any = connection.connection.driver_connection
    # Both streams closed on the way out, whatever happens: their threads stop reading before
    # the connections go back.
    with (
        contextlib.closing(_links(twin, where)) as links,
        contextlib.closing(_copy_lines(raw, sql, _COPY_OPTIONS)) as events,
    ):
        link = next(links, None)
        for batch in events:
            for line in batch:
                fields = line[:-1].split(tab)
                event_id = fields[i_id]
                ids: list[bytes] = []
                links_plain = True
                if link is not None and link[0] == event_id:
                    ids, links_plain = link[1], link[2]
                    link = next(links, None)
                chain = fields[i_chain]
                if chain != current_chain or current is None:
                    current, current_chain = checks[chain.decode()], chain  # bare, never NULL
                # No escape anywhere, and no quote before the JSON lists (the last two fields) but
                # the query's two around each text that is not NULL.
                cut = len(line) - len(fields[_I_FIELDS]) - len(fields[_I_CHANGED]) - 3
                if (
                    links_plain
                    and backslash not in line
                    and line.count(b'"', 0, cut) == 2 * (_N_QUOTED - fields[:_N_TEXT].count(null))
                ):
                    encoded = _plain_encoded(
                        fields, b'["' + b'","'.join(ids) + b'"]' if ids else b"[]"
                    )
                    prev_hash, stored = fields[i_prev], fields[i_hash]
                    if (
                        encoded is not None
                        and digest(prev_hash + newline + encoded).hex().encode() == stored
                    ):
                        current.check(
                            int(fields[i_seq]),
                            event_id.decode(),
                            fields[i_at].decode(),
                            prev_hash.decode(),
                            stored.decode(),
                            True,
                        )
                        continue
                # Anything else, a seal that does not match included: the row decoded and encoded
                # as the writer encodes it.
                encoded = _row_encoded(fields, [_copy_field(customer).decode() for customer in ids])
                at_ = _copy_field(fields[i_at]).decode()
                prev_, stored_ = _copy_text(fields[i_prev]), _copy_text(fields[i_hash])
                current.check(
                    int(fields[i_seq]),
                    _copy_field(event_id).decode(),
                    at_,
                    prev_,
                    stored_,
                    encoded is not None
                    and prev_ is not None
                    and stored_ is not None
                    and digest(prev_.encode() + newline + encoded).hex() == stored_,
                )
        if link is not None:
            raise RuntimeError("the links' stream is out of step with the events'")


# --- one chain ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _HeadRow:
    seq: int
    hash: str
    mac: str


class _ChainCheck:
    def __init__(
        self,
        verification: Verification,
        keys: AuditKeys,
        chain: str,
        *,
        start: Head | None,
        checkpoint: Head | None,
        head: _HeadRow | None,
        registered: bool,
        anchor: Head | None = None,
    ) -> None:
        self.v = verification
        self.key = keys.chain
        self.keys = keys
        self.chain = chain
        if anchor is not None and start is not None and start[0] < anchor[0]:
            start = None  # where the last verification stopped was pruned since
        self.start = start
        self.checkpoint = checkpoint
        self.head = head
        self.registered = registered
        self.anchor = anchor
        # Events before the anchor were pruned (or are about to be): not expected, not checked.
        self.below = anchor[0] if anchor is not None else 0
        before = (anchor[0] - 1, anchor[1]) if anchor is not None else (0, GENESIS_HASH)
        self.expect = (start[0] if start else before[0]) + 1
        self.prev = start[1] if start else before[1]
        self.start_seen = start is None or start[0] == 0
        self.events = 0
        self.last_seq = start[0] if start else before[0]

    @property
    def from_seq(self) -> int:
        return self.start[0] if self.start else self.below

    def feed(self, row: Sequence[Any]) -> None:
        """A streamed row (``_COLUMNS``)."""
        encoded = _encoded(row)
        prev_hash, stored = row[24], row[25]
        # (Plain comparisons: nobody times a verification to learn a hash.)
        sealed = encoded is not None and seal_encoded(self.key, prev_hash, encoded) == stored
        self.check(row[2], row[0], row[3], prev_hash, stored, sealed)

    def check(
        self,
        seq: int,
        event_id: str,
        at: str | None,
        prev_hash: str | None,
        stored: str | None,
        sealed: bool,
    ) -> None:
        """One event, in order; ``sealed``: whether its hash is its seal."""
        v = self.v
        if seq < self.below:
            return
        v.checked += 1
        self.events += 1
        if self.start is not None and seq == self.start[0]:
            # Where the last verification stopped: the event must still be the one it saw.
            self.start_seen = True
            if stored != self.start[1]:
                v.report(Finding(HASH_MISMATCH, self.chain, seq, event_id, at))
            return
        if seq != self.expect:
            v.report(Finding(SEQ_GAP, self.chain, seq, event_id, at))
        elif prev_hash != self.prev:
            v.report(Finding(HASH_MISMATCH, self.chain, seq, event_id, at))
        if not sealed:
            v.report(Finding(HASH_MISMATCH, self.chain, seq, event_id, at))
        if (
            self.checkpoint is not None
            and seq == self.checkpoint[0]
            and stored != self.checkpoint[1]
        ):
            v.report(Finding(HASH_MISMATCH, self.chain, seq, event_id, at))
        self.prev = stored or ""
        self.expect = seq + 1
        self.last_seq = seq

    def finish(self) -> None:
        v, chain = self.v, self.chain
        if self.events == 0 and self.anchor is None and (self.head is None or self.start is None):
            v.report(Finding(CHAIN_MISSING, chain))
            return
        if not self.registered:
            v.report(Finding(CHAIN_UNREGISTERED, chain))
        if not self.start_seen:
            # Events the last verification saw are gone.
            v.report(Finding(TAIL_TRUNCATED, chain, self.start[0] if self.start else None))
            return
        if self.checkpoint is not None and self.last_seq < self.checkpoint[0]:
            v.report(Finding(TAIL_TRUNCATED, chain, self.checkpoint[0]))
        head = self.head
        if head is None or not hmac.compare_digest(
            self.keys.head_mac(chain, head.seq, head.hash), head.mac
        ):
            v.report(Finding(TAIL_TRUNCATED, chain, head.seq if head else None))
        elif head.seq != self.last_seq:
            v.report(Finding(TAIL_TRUNCATED, chain, head.seq))
        elif head.hash != self.prev:
            v.report(Finding(HASH_MISMATCH, chain, head.seq))
        else:
            v.heads[chain] = (head.seq, head.hash)


# --- the whole log -------------------------------------------------------------------------------


def _heads(connection: Connection) -> dict[str, _HeadRow]:
    rows = connection.execute(text("SELECT chain, seq, head_hash, mac FROM audit_chain"))
    return {chain: _HeadRow(int(seq), head_hash, mac) for chain, seq, head_hash, mac in rows}


def _registered(connection: Connection, keys: AuditKeys) -> set[str]:
    from app.models import AuditChainRegistry

    rows = connection.execute(
        AuditChainRegistry.__table__.select()  # typed datetimes, for the MAC's timestamp
    )
    return {
        row.chain
        for row in rows
        if hmac.compare_digest(keys.registry_mac(row.chain, row.registered_at), row.mac)
    }


def checkpoint_lines(connection: Connection, *, after: int = 0) -> list[str]:
    """The database's copies of the checkpoint lines numbered after ``after`` (those the file
    does not have at its end, e.g. if it was rolled back)."""
    statement = text("SELECT line FROM audit_checkpoint WHERE n > :n")
    return list(connection.execute(statement, {"n": after}).scalars())


def verify(
    connection: Connection,
    keys: AuditKeys,
    checkpoints: Fold,
    *,
    full: bool,
) -> Verification:
    """Verify the log as this connection's transaction sees it, against the checkpoints.

    ``full``: every event from each chain's start; otherwise from where the last passing
    verification (``checkpoints.verified``) left each chain."""
    verification = Verification(full=full)
    heads = _heads(connection)
    registered = _registered(connection, keys)
    with_events = set(connection.execute(_CHAINS_WITH_EVENTS).scalars())
    chains = sorted(set(heads) | registered | set(checkpoints.heads) | with_events)

    def check(chain: str, start: Head | None) -> _ChainCheck:
        return _ChainCheck(
            verification,
            keys,
            chain,
            start=start,
            checkpoint=checkpoints.heads.get(chain),
            head=heads.get(chain),
            registered=chain in registered,
            anchor=checkpoints.anchors.get(chain),
        )

    if full:
        workers = _workers(connection, heads)
        if workers > 1:
            _verify_in_parallel(connection, keys, verification, chains, check, workers)
            return verification
        checks = {chain: check(chain, None) for chain in chains}
        if _copies(connection):
            with _snapshot_twin(connection) as twin:
                _feed_copy(connection, twin, checks, keys.chain, "TRUE")
        else:
            for row in _all_events(connection):
                checks[row[1]].feed(row)
        for chain in chains:
            checks[chain].finish()
        return verification

    copies = _copies(connection)
    with contextlib.ExitStack() as stack:
        twin = stack.enter_context(_snapshot_twin(connection)) if copies and chains else None
        for chain in chains:
            start = checkpoints.verified.get(chain)
            current = check(chain, start)
            if twin is not None:
                where = (
                    f"e.chain = {_literal(connection, chain)} "
                    f"AND e.seq >= {_literal(connection, current.from_seq)}"
                )
                _feed_copy(connection, twin, {chain: current}, keys.chain, where)
            else:
                for row in _chain_events(connection, chain, current.from_seq):
                    current.feed(row)
            current.finish()
    return verification


# --- a full verification of a large log on PostgreSQL, in several processes ---------------------
#
# Chains are independent, so they are shared out between processes that read the same snapshot
# (exported by this transaction); each checks its chains exactly as above.

PARALLEL_MIN_EVENTS = 250_000
MAX_WORKERS = 4


def _workers(connection: Connection, heads: dict[str, _HeadRow]) -> int:
    if not _copies(connection) or sum(h.seq for h in heads.values()) < PARALLEL_MIN_EVENTS:
        return 1
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1, len(heads)))


@dataclass(frozen=True)
class _Part:
    url: str
    snapshot: str
    keys: AuditKeys
    # Per chain: its newest checkpoint, its head row, whether it is registered, its anchor.
    chains: list[tuple[str, Head | None, _HeadRow | None, bool, Head | None]]


def _check_part(connection: Connection, part: _Part, verification: Verification) -> None:
    checks = {
        chain: _ChainCheck(
            verification,
            part.keys,
            chain,
            start=None,
            checkpoint=checkpoint,
            head=head,
            registered=registered,
            anchor=anchor,
        )
        for chain, checkpoint, head, registered, anchor in part.chains
    }
    where = f"e.chain = ANY({_literal(connection, list(checks))})"
    with _snapshot_twin(connection) as twin:
        _feed_copy(connection, twin, checks, part.keys.chain, where)
    for check in checks.values():
        check.finish()


def _verify_part(part: _Part) -> Verification:
    """In a worker process: the part's chains, in the snapshot of the main verification."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(part.url, poolclass=NullPool, isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as connection, connection.begin():
            connection.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{part.snapshot}'")
            verification = Verification(full=True)
            _check_part(connection, part, verification)
            return verification
    finally:
        engine.dispose()


def _verify_in_parallel(
    connection: Connection,
    keys: AuditKeys,
    verification: Verification,
    chains: list[str],
    check: Any,
    workers: int,
) -> None:
    snapshot = connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
    url = connection.engine.url.render_as_string(hide_password=False)
    # Balanced by length (the head's seq), longest first.
    probes = sorted((check(chain, None) for chain in chains), key=lambda c: -_length(c))
    loads = [0] * workers
    groups: list[list[tuple[str, Head | None, _HeadRow | None, bool, Head | None]]] = [
        [] for _ in loads
    ]
    for probe in probes:
        slot = loads.index(min(loads))
        loads[slot] += _length(probe)
        groups[slot].append(
            (probe.chain, probe.checkpoint, probe.head, probe.registered, probe.anchor)
        )
    parts = [_Part(url, snapshot, keys, group) for group in groups]
    # Worker processes of our own (``python -m app.audit.verify_worker``), given their part
    # (the keys included) on stdin, never on the command line.
    processes = []
    for part in parts[1:]:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.audit.verify_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None
        process.stdin.write(pickle.dumps(part))
        process.stdin.close()
        processes.append(process)
    try:
        _check_part(connection, parts[0], verification)
        for process in processes:
            assert process.stdout is not None
            output = process.stdout.read()
            if process.wait() != 0:
                raise RuntimeError("a verification worker failed")
            result: Verification = pickle.loads(output)  # noqa: S301 (our own worker's answer)
            verification.checked += result.checked
            verification.heads.update(result.heads)
            verification.more_problems += result.more_problems
            for finding in result.findings:
                verification.report(finding)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _length(check: _ChainCheck) -> int:
    return check.head.seq if check.head else 0


def changed_heads(current: dict[str, Head], fold: Fold) -> dict[str, Head]:
    return {chain: head for chain, head in current.items() if fold.heads.get(chain) != head}


def compare_heads(
    connection: Connection, keys: AuditKeys, fold: Fold
) -> tuple[dict[str, Head], list[Finding]]:
    """The committed heads, compared with the newest checkpoint (a cheap check, not a
    verification): each authenticated and registered, no chain missing or shorter than the
    checkpoint, and the event at the checkpoint's head still the one it recorded."""
    heads = _heads(connection)
    registered = _registered(connection, keys)
    findings: list[Finding] = []
    current: dict[str, Head] = {}
    for chain, row in heads.items():
        if not hmac.compare_digest(keys.head_mac(chain, row.seq, row.hash), row.mac):
            findings.append(Finding(TAIL_TRUNCATED, chain, row.seq))
        elif chain not in registered:
            findings.append(Finding(CHAIN_UNREGISTERED, chain))
        else:
            current[chain] = (row.seq, row.hash)
    findings.extend(Finding(CHAIN_MISSING, chain) for chain in sorted(registered - set(heads)))
    statement = text("SELECT hash FROM access_event WHERE chain = :chain AND seq = :seq")
    for chain, (seq, digest) in fold.heads.items():
        head = heads.get(chain)
        if head is None:
            if chain in registered:
                continue  # reported above
            findings.append(Finding(CHAIN_MISSING, chain))
        elif head.seq < seq:
            findings.append(Finding(TAIL_TRUNCATED, chain, seq))
        elif head.seq == seq:
            if head.hash != digest:
                findings.append(Finding(HASH_MISMATCH, chain, seq))
        elif (anchor := fold.anchors.get(chain)) is not None and seq < anchor[0]:
            # That event was pruned: only the anchor's link to it can be compared.
            if seq == anchor[0] - 1 and anchor[1] != digest:
                findings.append(Finding(HASH_MISMATCH, chain, seq))
        elif connection.execute(statement, {"chain": chain, "seq": seq}).scalar() != digest:
            findings.append(Finding(HASH_MISMATCH, chain, seq))
    return current, findings
