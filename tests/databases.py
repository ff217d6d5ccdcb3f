"""Test databases: one migrated (and seeded) template per backend, a clean copy per test.

Tests exercise real commits, so each starts from a database in the template's exact state: a
copy of the SQLite template file, or on PostgreSQL (when ``SHOPVAULT_TEST_POSTGRES_URL`` is set;
if it is set but unreachable, the tests fail rather than skip) a database made with
``CREATE DATABASE … TEMPLATE``. Creating and dropping a PostgreSQL database costs about two
seconds of fsyncs here, so a copy whose *schema* a test left untouched is handed to the next test
after its rows are reset to the template's (every table emptied, the cast inserted again); a copy
whose schema changed (a trap trigger, a downgrade) is dropped and replaced by a fresh copy.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import Engine, text, update
from sqlalchemy.engine import make_url

from app import migrate
from app.db import create_sync_engine
from app.models import Base, ShredBucket
from app.shred_keys import FIRST_VERSION
from tests import cast

POSTGRES_ENV = "SHOPVAULT_TEST_POSTGRES_URL"


def postgres_base_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def _admin_conninfo(base_url: str) -> str:
    url = make_url(base_url)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(base_url: str, name: str) -> str:
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def build_sqlite_template(directory: Path) -> Path:
    path = directory / "template.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    engine = create_sync_engine(url)
    cast.seed(engine)
    engine.dispose()
    return path


def sqlite_copy(template: Path, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "shopvault.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def _execute_autocommit(base_url: str, sql: str) -> None:
    with psycopg.connect(_admin_conninfo(base_url), autocommit=True) as connection:
        connection.execute(sql)  # type: ignore[arg-type]


@contextmanager
def postgres_template(base_url: str) -> Iterator[str]:
    name = f"sv_template_{uuid.uuid4().hex[:10]}"
    _execute_autocommit(base_url, f'CREATE DATABASE "{name}"')
    url = _with_database(base_url, name)
    try:
        migrate.upgrade(url)
        engine = create_sync_engine(url)
        cast.seed(engine)
        engine.dispose()
        yield name
    finally:
        _execute_autocommit(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_SCHEMA_FINGERPRINT = text(
    """
    SELECT
      (SELECT string_agg(version_num::text, ',') FROM alembic_version),
      (SELECT string_agg(c.relname::text || ':' || c.relkind::text, ',' ORDER BY c.relname)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public'),
      (SELECT string_agg(tgname::text, ',' ORDER BY tgname) FROM pg_trigger WHERE NOT tgisinternal),
      (SELECT string_agg(p.proname::text, ',' ORDER BY p.proname)
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public')
    """
)


def _fingerprint(engine: Engine) -> tuple[object, ...]:
    with engine.connect() as connection:
        return tuple(connection.execute(_SCHEMA_FINGERPRINT).one())


class PostgresCopies:
    """Clean copies of the template database, reset between tests (see the module docstring)."""

    def __init__(self, base_url: str, template: str) -> None:
        self.base_url = base_url
        self.template = template
        self._spare: list[str] = []
        self._created: set[str] = set()
        self._fingerprint: tuple[object, ...] | None = None

    def _create(self) -> str:
        name = f"sv_test_{uuid.uuid4().hex[:12]}"
        _execute_autocommit(self.base_url, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self._created.add(name)
        return name

    def _drop(self, name: str) -> None:
        _execute_autocommit(self.base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._created.discard(name)

    def _reset(self, name: str) -> bool:
        """Back to the template's rows, if the schema is untouched; False if it was changed."""
        engine = create_sync_engine(_with_database(self.base_url, name))
        try:
            fingerprint = _fingerprint(engine)
            if self._fingerprint is None:
                template_engine = create_sync_engine(_with_database(self.base_url, self.template))
                self._fingerprint = _fingerprint(template_engine)
                template_engine.dispose()
            if fingerprint != self._fingerprint:
                return False
            with engine.begin() as connection:
                # The access log's tables refuse DELETE (append-only triggers); a replica session
                # fires no ordinary triggers, so the reset (and only it) may empty them.
                connection.execute(text("SET LOCAL session_replication_role = replica"))
                # DELETE, not TRUNCATE: these tables are tiny, and TRUNCATE fsyncs new files.
                for table in reversed(Base.metadata.sorted_tables):
                    if table.name == ShredBucket.__tablename__:
                        # Its rows come from the migration: every bucket back at its first version.
                        connection.execute(
                            update(ShredBucket).values(version=FIRST_VERSION, pending=False)
                        )
                    else:
                        connection.execute(table.delete())
                cast.seed_into(connection)
            return True
        finally:
            engine.dispose()

    @contextmanager
    def copy(self) -> Iterator[str]:
        name = self._spare.pop() if self._spare else self._create()
        try:
            yield _with_database(self.base_url, name)
        finally:
            _execute_autocommit(
                self.base_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            )
            if self._reset(name):
                self._spare.append(name)
            else:
                self._drop(name)

    def close(self) -> None:
        for name in list(self._created):
            self._drop(name)


@contextmanager
def postgres_empty(base_url: str) -> Iterator[str]:
    name = f"sv_empty_{uuid.uuid4().hex[:12]}"
    _execute_autocommit(base_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(base_url, name)
    finally:
        _execute_autocommit(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
