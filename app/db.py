"""Engines and sessions.

The settings carry plain URLs (``sqlite:///path``, ``postgresql://user@host/db``); this module
picks the drivers: asyncpg / aiosqlite on the request path, psycopg / sqlite3 for Alembic and the
CLI. SQLite connections get WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for every
transaction: each request that touches data also appends an access event, and a deferred BEGIN
that later writes fails with "database is locked" under concurrency.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
from sqlalchemy.pool import NullPool

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


def _configure_sqlite(engine: Engine) -> None:
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
        connection.exec_driver_sql("BEGIN IMMEDIATE")


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


def create_request_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """The asyncio engine used by the API."""
    if is_sqlite(url):
        engine = create_async_engine(async_url(url))
        _configure_sqlite(engine.sync_engine)
        return engine
    engine = create_async_engine(
        async_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False
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
