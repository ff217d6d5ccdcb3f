"""Test databases: one migrated (and seeded) template per backend, one copy per test.

Tests exercise real commits, so each gets its own database: a copy of the SQLite template file,
or ``CREATE DATABASE … TEMPLATE`` on PostgreSQL (when ``SHOPVAULT_TEST_POSTGRES_URL`` is set; if
it is set but unreachable, the tests fail rather than skip).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from app import migrate
from app.db import create_sync_engine
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


@contextmanager
def postgres_copy(base_url: str, template: str) -> Iterator[str]:
    name = f"sv_test_{uuid.uuid4().hex[:12]}"
    _execute_autocommit(base_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _with_database(base_url, name)
    finally:
        _execute_autocommit(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_empty(base_url: str) -> Iterator[str]:
    name = f"sv_empty_{uuid.uuid4().hex[:12]}"
    _execute_autocommit(base_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(base_url, name)
    finally:
        _execute_autocommit(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
