"""Engines and sessions.

The settings carry plain URLs (``sqlite:///path``, ``postgresql://user@host/db``); this module
picks the drivers: asyncpg / aiosqlite on the request path, psycopg / sqlite3 for Alembic and the
CLI. SQLite connections get WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for every
transaction: each request that touches data also appends an access event, and a deferred BEGIN
that later writes fails with "database is locked" under concurrency.

Within the API process the SQLite request engine also queues its transactions on a
``WriterQueue`` before ``BEGIN IMMEDIATE``: one at a time, first come first served, so that no
connection waits in SQLite's busy handler (which sleeps up to 100 ms between tries and lets
newcomers in first). Other processes (the worker, the CLI) still meet it through the busy timeout.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Engine,
    String,
    any_,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import await_only

from app.config import DB_POOL_SIZE

SQLITE_BUSY_TIMEOUT_MS = 10_000


# What a database that went away raises: SQLAlchemy's errors, and what a driver lets through
# unwrapped while connecting (asyncpg's refused or reset connection, a timeout).
DatabaseUnavailable = (SQLAlchemyError, ConnectionError, TimeoutError)


def _driver_url(url: str, *, async_: bool) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite" if async_ else "sqlite").render_as_string(
            hide_password=False
        )
    if backend in {"postgresql", "postgres"}:
        driver = "postgresql+asyncpg" if async_ else "postgresql+psycopg"
        return parsed.set(drivername=driver).render_as_string(hide_password=False)
    raise ValueError(f"unsupported database backend: {backend}")


def async_url(url: str) -> str:
    return _driver_url(url, async_=True)


def sync_url(url: str) -> str:
    return _driver_url(url, async_=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _configure_sqlite(engine: Engine, writers: WriterQueue | None = None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit the BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if writers is not None:
            writers.take(connection.connection.dbapi_connection)
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    if writers is not None:
        # Given back when the connection returns to the pool (after its COMMIT or ROLLBACK),
        # or is invalidated, detached or closed.
        def _give_back(dbapi_connection: Any, *_args: Any) -> None:
            writers.release(dbapi_connection)

        for name in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
            event.listen(engine, name, _give_back)


class WriterQueue:
    """This process's writers to one SQLite database, one at a time, in the order they came.

    An owner (a DBAPI connection, or any object) holds the queue from its ``BEGIN IMMEDIATE`` until
    it lets go; a release hands the queue straight to the first waiter, so a newcomer never
    overtakes. A wait longer than the busy timeout fails as SQLite's own would ("database is
    locked"). Not reentrant across owners: a holder that waits for a second transaction of its
    own waits for itself, as it would on SQLite's lock.
    """

    def __init__(self, timeout_seconds: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
        self._timeout = timeout_seconds
        self._holder: object | None = None
        self._waiters: deque[tuple[asyncio.Future[None], object]] = deque()

    @property
    def holder(self) -> object | None:
        return self._holder

    def waiting(self) -> int:
        return sum(1 for future, _owner in self._waiters if not future.done())

    def take(self, owner: object) -> None:
        """Block (in SQLAlchemy's greenlet, from sync engine code) until ``owner`` holds it."""
        if self._holder is owner:
            return
        if self._holder is None and not self._waiters:
            self._holder = owner
            return
        await_only(self.acquire(owner))

    async def acquire(self, owner: object) -> None:
        if self._holder is owner:
            return
        if self._holder is None and not self._waiters:
            self._holder = owner
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (future, owner)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self._timeout):
                await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                self.release(owner)  # handed over while leaving: pass it on
            else:
                future.cancel()
                if entry in self._waiters:  # a release may have skipped it already
                    self._waiters.remove(entry)
            if isinstance(exc, TimeoutError):
                raise OperationalError(
                    "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
                ) from exc
            raise

    def release(self, owner: object) -> None:
        if self._holder is not owner:
            return
        self._holder = None
        if self._waiters and not _in_loop_of(self._waiters[0][0]):
            # A connection let go of outside the event loop (garbage collected): hand over there.
            self._waiters[0][0].get_loop().call_soon_threadsafe(self._hand_over)
            return
        self._hand_over()

    def _hand_over(self) -> None:
        if self._holder is not None:
            return
        while self._waiters:
            future, next_owner = self._waiters.popleft()
            if not future.done():
                self._holder = next_owner
                future.set_result(None)
                return

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold it for work of one's own (a checkpoint written from a worker thread)."""
        owner = object()
        await self.acquire(owner)
        try:
            yield
        finally:
            self.release(owner)


def _in_loop_of(future: asyncio.Future[None]) -> bool:
    try:
        return asyncio.get_running_loop() is future.get_loop()
    except RuntimeError:
        return False


# Statements that change no data. Anything else a transaction runs marks it as having written.
_CHANGES_NOTHING = re.compile(r"\s*(SELECT|BEGIN|SAVEPOINT|RELEASE|ROLLBACK)\b", re.IGNORECASE)
_WROTE = "shopvault.wrote"


def _track_writes(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _fresh(connection: Any) -> None:
        connection.info[_WROTE] = False

    @event.listens_for(engine, "before_cursor_execute")
    def _note(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not _CHANGES_NOTHING.match(statement):
            connection.info[_WROTE] = True


def wrote(connection: AsyncConnection) -> bool:
    """Whether the connection's transaction ran anything but reads (when unsure: it did)."""
    return bool(connection.info.get(_WROTE, True))


# The API process's PostgreSQL pool has no overflow: the group commit answers its waiting reads
# together, and their clients' next requests then arrive together. Overflow connections would be
# opened for such a burst and closed after it, each a new backend and a new round of asyncpg's
# type introspection; a request beyond the pool waits for a connection instead.


def create_request_engine(
    url: str, *, pool_size: int = DB_POOL_SIZE, writers: WriterQueue | None = None
) -> AsyncEngine:
    """The asyncio engine used by the API; on SQLite its transactions queue on ``writers``."""
    if is_sqlite(url):
        engine = create_async_engine(async_url(url))
        _configure_sqlite(engine.sync_engine, writers or WriterQueue())
        return engine
    engine = create_async_engine(
        async_url(url), pool_size=pool_size, max_overflow=0, pool_pre_ping=False
    )
    _track_writes(engine.sync_engine)
    return engine


def create_read_engine(url: str) -> AsyncEngine:
    """An asyncio engine for reads off the request path: on SQLite its transactions are
    deferred (WAL readers take no lock); elsewhere it is an ordinary small pool."""
    if not is_sqlite(url):
        return create_async_engine(async_url(url), pool_size=2, max_overflow=2)
    engine = create_async_engine(async_url(url))

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def create_sync_engine(url: str) -> Engine:
    """A blocking engine for Alembic and the CLI."""
    if is_sqlite(url):
        engine = create_engine(sync_url(url), poolclass=NullPool)
        _configure_sqlite(engine)
        return engine
    return create_engine(sync_url(url), poolclass=NullPool)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


# How long a statement waits for one of the snapshot reads' connections (SQLAlchemy's pool
# waits as long for one of its own).
SNAPSHOT_WAIT_SECONDS = 30.0


class SnapshotReads:
    """A few asyncpg connections of this process's own, for statements that need no
    transaction: one statement, one snapshot (a read-only request's access query).

    No session, no checkout through SQLAlchemy's pool and no reset on return: a connection
    comes back from a statement that completed exactly as it went out (outside any
    transaction), so it is handed straight to the next. One whose statement did not complete
    (a lost connection, a cancelled request) is closed, never reused. At most ``size`` are open;
    a statement beyond them waits for one, first come first served."""

    def __init__(self, url: str, size: int) -> None:
        parsed = make_url(url)
        self._dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self.size = size
        self._opened = 0
        self._idle: list[asyncpg.Connection] = []
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._closed = False
        self.statements = 0  # run so far, for the benchmarks' count of round trips

    @property
    def open_connections(self) -> int:
        return self._opened

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[asyncpg.Record]:
        """The rows of one statement; errors mean what the session's would
        (``DatabaseUnavailable``)."""
        connection = await self._acquire(sql)
        self.statements += 1
        try:
            rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
        except BaseException as exc:
            if _reusable_after(exc, connection):
                self._release(connection)
            else:
                self._discard(connection)
            if isinstance(exc, _DISCONNECTS):
                # As SQLAlchemy's pool does on a disconnect: the server (or the network) that
                # dropped this one most likely dropped the idle ones too.
                while self._idle:
                    self._discard(self._idle.pop())
            if (error := _database_error(sql, exc)) is not None:
                raise error from exc
            raise
        self._release(connection)
        return rows

    async def _acquire(self, sql: str) -> asyncpg.Connection:
        if self._closed:
            raise OperationalError(sql, None, ConnectionError("the reads are closed"))
        while self._idle:
            idle = self._idle.pop()
            if not idle.is_closed():
                return idle
            # Ended by the server while idle (a restart, a terminated backend): seen on the
            # socket already, so not handed to a statement that would fail on it.
            self._discard(idle)
        if self._opened < self.size:
            self._opened += 1
            try:
                connection: asyncpg.Connection = await asyncpg.connect(self._dsn)
            except BaseException as exc:
                self._opened -= 1
                self._wake_one()
                if (error := _database_error(sql, exc)) is not None:
                    raise error from exc
                raise
            return connection
        waiter: asyncio.Future[asyncpg.Connection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(SNAPSHOT_WAIT_SECONDS):
                handed = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed over while leaving: pass it on.
                handed_over = waiter.result()
                if handed_over is None:
                    self._wake_one()
                else:
                    self._release(handed_over)
            if isinstance(exc, TimeoutError):
                # As SQLAlchemy's pool gives up on a checkout: the database is unavailable.
                raise OperationalError(sql, None, exc) from exc
            raise
        # None: a connection was closed, so one may be opened in its place.
        return handed if handed is not None else await self._acquire(sql)

    def _release(self, connection: asyncpg.Connection) -> None:
        if self._closed or connection.is_closed():
            self._discard(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _discard(self, connection: asyncpg.Connection) -> None:
        connection.terminate()
        self._opened -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        self._opened -= len(idle)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # it finds the reads closed
        try:
            for connection in idle:
                await connection.close(timeout=5)
        finally:
            for connection in idle:
                if not connection.is_closed():
                    connection.terminate()


# What statements and types run on the driver are compiled for (no connection needed).
DRIVER_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class DriverQuery:
    """A Core statement compiled once for asyncpg: its SQL, the names of its ``$n`` parameters
    in order, and the values of the literals it binds itself."""

    sql: str
    names: tuple[str, ...]
    literals: Mapping[str, Any]

    @classmethod
    def compile(cls, statement: ClauseElement) -> DriverQuery:
        compiled = statement.compile(dialect=DRIVER_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        expanding = [name for name, bind in compiled.binds.items() if bind.expanding]
        if expanding:  # an ``in_`` list, which SQLAlchemy expands at execution, not here
            raise ValueError(f"expanding parameters cannot run on the driver: {expanding}")
        return cls(str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params))

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The ``$n`` values, in order: from ``params``, else the statement's own literals."""
        literals = self.literals
        return [params[name] if name in params else literals[name] for name in self.names]


class Reads(Protocol):
    """Where a request's reads run: its session, and, on PostgreSQL before the session has
    begun a transaction, the process's ``SnapshotReads`` (``UnitOfWork`` is one)."""

    @property
    def session(self) -> AsyncSession: ...

    @property
    def snapshot_reads(self) -> SnapshotReads | None: ...


def runs_on_driver(session: AsyncSession) -> bool:
    """Whether ``fetch_on_driver`` can run on this session's database (PostgreSQL)."""
    return session.get_bind().dialect.driver == "asyncpg"


def among(
    session: AsyncSession,
    column: QueryableAttribute[Any] | ColumnElement[Any],
    values: Iterable[Any],
) -> ColumnElement[bool]:
    """``column IN (values)``; on PostgreSQL ``column = ANY($1)``, one array parameter for any
    number of values, where an IN list of a batch's ids renders a placeholder and a cast per
    value on every execution (most of the statement building in a purge's erasures)."""
    listed = list(values)
    if session.get_bind().dialect.name == "postgresql":
        element = column.type
        if isinstance(element, String):
            # Not the column's varchar(n): a cast to it would cut a longer value to a match.
            element = String()
        return column == any_(bindparam(None, listed, type_=ARRAY(element)))
    return column.in_(listed)


async def fetch_on_driver(
    session: AsyncSession, query: DriverQuery, params: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    """Run ``query`` on asyncpg directly: no ORM, no statement building, and, when the session
    has not begun a transaction of its own, none at all — one statement sees one snapshot, and a
    read that is its request's only query costs one round trip instead of three (BEGIN, SELECT,
    ROLLBACK). Rows come as the driver gives them (no
    type processing: callers read plain columns). Database errors are raised as SQLAlchemy's,
    so they mean what they mean elsewhere (``DatabaseUnavailable``)."""
    rows: Sequence[Sequence[Any]] = await _on_driver(
        session, "fetch", query.sql, query.arguments(params)
    )
    return rows


async def execute_on_driver(session: AsyncSession, sql: str, args: Sequence[Any]) -> None:
    """Run one statement (``$n`` parameters) on the session's asyncpg connection: within the
    session's transaction if it has begun one on the wire, else as a transaction of its own."""
    await _on_driver(session, "execute", sql, args)


# What leaves the driver's connection gone or in an unknown state: it is invalidated, not put
# back in the pool (asyncpg reports a server that ended the session as a PostgresError).
_DISCONNECTS = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


async def _on_driver(session: AsyncSession, method: str, sql: str, args: Sequence[Any]) -> Any:
    connection = await session.connection()
    driver: Any = (await connection.get_raw_connection()).driver_connection
    try:
        return await getattr(driver, method)(sql, *args)
    except BaseException as exc:
        if not _reusable_after(exc, driver):
            await connection.invalidate()
        if (error := _database_error(sql, exc)) is not None:
            raise error from exc
        raise


def _reusable_after(exc: BaseException, driver: asyncpg.Connection) -> bool:
    """Whether a connection is fit for the next statement after ``exc``: only after an error
    of the statement itself — anything else (a cancellation included) may have left it
    mid-operation."""
    plain = isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _DISCONNECTS)
    return plain and not driver.is_closed()


def _database_error(sql: str, exc: BaseException) -> OperationalError | None:
    """A driver's ``exc`` as SQLAlchemy's error, if it is the database's (so that it means
    what it means elsewhere: ``DatabaseUnavailable``); None for anything else."""
    if isinstance(exc, (asyncpg.PostgresError, *_DISCONNECTS)):
        return OperationalError(sql, None, exc)
    return None
