"""The database's own guards (PostgreSQL): the application connects as a role that may only
INSERT and SELECT the access log (migration 0011; migrations run as the owner).

The whole API is walked — every route as every role, the route × role matrix test's walk — with
the application connected as such a role, so the grants are enough for everything it does; and
that role's UPDATE, DELETE and TRUNCATE of the log's tables, and any change to the schema, fail
with the database's own "permission denied", not a trigger the owner could drop.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from app.db import sync_url
from app.main import create_app
from tests.conftest import SettingsFactory
from tests.test_route_matrix import _walk

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

APP_ROLE = "shopvault_app"
LOG_TABLES = ("access_event", "access_event_customer", "audit_chain_registry", "audit_checkpoint")


@pytest.fixture
def app_url(database_url: str) -> Iterator[str]:
    """A login role of this test's own, member of ``shopvault_app``, and a URL that uses it."""
    login = f"sv_app_{uuid.uuid4().hex[:12]}"
    admin = make_url(database_url).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {login} LOGIN IN ROLE {APP_ROLE}")
    try:
        yield make_url(database_url).set(username=login).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (login,),
            )
            connection.execute(f"DROP ROLE {login}")


@pytest.fixture
def as_app(app_url: str) -> Iterator[Engine]:
    engine = create_engine(sync_url(app_url), poolclass=NullPool)
    yield engine
    engine.dispose()


def test_the_application_role_does_everything_the_api_does(
    make_settings: SettingsFactory, app_url: str, db: Engine
) -> None:
    with TestClient(create_app(make_settings(database_url=app_url, message_daily_cap=100))) as c:
        _walk(c, db)
    with db.connect() as connection:
        events = connection.execute(text("SELECT count(*) FROM access_event")).scalar_one()
    assert events > 100


@pytest.mark.parametrize("table", LOG_TABLES)
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {table} SET {column} = {column}",
        "DELETE FROM {table}",
        "TRUNCATE {table}",
    ],
    ids=["update", "delete", "truncate"],
)
def test_the_application_role_may_not_change_the_log(
    as_app: Engine, db: Engine, table: str, statement: str
) -> None:
    with db.connect() as connection:
        column = connection.execute(
            text(
                "SELECT column_name FROM information_schema.columns WHERE table_name = :table "
                "ORDER BY ordinal_position LIMIT 1"
            ),
            {"table": table},
        ).scalar_one()
    with pytest.raises(ProgrammingError, match="permission denied"), as_app.begin() as connection:
        connection.execute(text(statement.format(table=table, column=column)))


def test_the_application_role_may_read_and_append_the_log(as_app: Engine) -> None:
    with as_app.connect() as connection:
        for table in LOG_TABLES:
            connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        privileges = {
            table: connection.execute(
                text(
                    "SELECT string_agg(p, ',' ORDER BY p) FROM unnest(ARRAY"
                    "['SELECT','INSERT','UPDATE','DELETE','TRUNCATE']) p "
                    "WHERE has_table_privilege(current_user, :table, p)"
                ),
                {"table": table},
            ).scalar_one()
            for table in (*LOG_TABLES, "audit_chain", "customer", "alembic_version")
        }
    assert privileges == {
        **{table: "INSERT,SELECT" for table in LOG_TABLES},
        "audit_chain": "INSERT,SELECT,UPDATE",
        "customer": "DELETE,INSERT,SELECT,UPDATE",
        "alembic_version": "SELECT",
    }


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TRIGGER access_event_append_only ON access_event",
        "ALTER TABLE access_event DISABLE TRIGGER USER",
        "CREATE TABLE smuggled (id int)",
        "UPDATE alembic_version SET version_num = '0001'",
    ],
)
def test_the_application_role_may_not_change_the_schema(as_app: Engine, statement: str) -> None:
    with pytest.raises(ProgrammingError), as_app.begin() as connection:
        connection.execute(text(statement))


def test_tables_created_later_get_the_application_grants(db: Engine, as_app: Engine) -> None:
    """A later migration's table (made by the owner) is the application's to use."""
    with db.begin() as connection:
        connection.execute(text("CREATE TABLE later_feature (id int PRIMARY KEY)"))
    with as_app.begin() as connection:
        connection.execute(text("INSERT INTO later_feature VALUES (1)"))
        connection.execute(text("DELETE FROM later_feature"))
    with db.begin() as connection:
        connection.execute(text("DROP TABLE later_feature"))
