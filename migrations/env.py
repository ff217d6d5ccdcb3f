"""Alembic environment: sync drivers, batch mode on SQLite, the URL from settings."""

from __future__ import annotations

from alembic import context

from app.config import Settings
from app.db import create_sync_engine, is_sqlite
from app.models import Base

config = context.config
url: str = config.attributes.get("database_url") or Settings().resolved_migration_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_sync_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=is_sqlite(url),
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
