"""Migrations run both ways on an empty database, and the migrated schema is the models' schema.

The comparison with the models is a standing guard: a model changed without a migration (or a
migration that drifts from its model) fails here, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app import migrate
from app.db import create_sync_engine
from app.models import Base
from tests import databases

APP_TABLES = frozenset(Base.metadata.tables)


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    base = databases.postgres_base_url()
    assert base is not None
    with databases.postgres_empty(base) as url:
        yield url


def _tables(url: str) -> set[str]:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def _schema_differences(url: str) -> list[Any]:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _version(url: str) -> set[str]:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    url = empty_database_url
    assert _tables(url) == set()

    migrate.upgrade(url)
    assert _tables(url) >= APP_TABLES
    assert _version(url) == set(migrate.head_revisions())

    migrate.downgrade(url, "base")
    assert _tables(url) - {"alembic_version"} == set()
    assert _version(url) == set()

    migrate.upgrade(url)
    assert _tables(url) >= APP_TABLES
    assert _tables(url) - APP_TABLES == {"alembic_version"}
    assert _version(url) == set(migrate.head_revisions())


def test_migrated_schema_matches_the_models(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    assert _schema_differences(empty_database_url) == []


def test_one_head() -> None:
    assert len(migrate.head_revisions()) == 1


def test_customer_keys_leave_room_on_their_pages_for_re_masked_versions(
    empty_database_url: str, backend: str
) -> None:
    """A purge updates every key of the buckets it touched: on PostgreSQL each page keeps room
    for its rows' new versions (no index entry per update), and after a downgrade it does not."""
    if backend != "postgres":
        pytest.skip("fillfactor is PostgreSQL's")
    from sqlalchemy import text

    def options() -> list[str]:
        engine = create_sync_engine(empty_database_url)
        try:
            with engine.connect() as connection:
                statement = text("SELECT reloptions FROM pg_class WHERE relname = 'customer_key'")
                return list(connection.execute(statement).scalar_one() or [])
        finally:
            engine.dispose()

    migrate.upgrade(empty_database_url)
    assert options() == ["fillfactor=75"]
    migrate.downgrade(empty_database_url, "0014")
    assert options() == []
