"""the application's PostgreSQL role: INSERT and SELECT only on the access log

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 09:00:00

Two roles (README, "Database roles"): the owner, which runs migrations (and the few commands
that must change what the application may not), and the application, which serves the API and
runs the worker. The application logs in as a role that is a member of the group role
``shopvault_app`` (created here when the owner may create roles; otherwise a DBA creates it,
NOLOGIN, before migrating). That group may read and write the business tables, but only INSERT
and SELECT the access log's append-only tables — no UPDATE, DELETE or TRUNCATE, whatever the
triggers say — and may not change the schema. Tables created by later migrations get the
business grants by default; an append-only one revokes UPDATE and DELETE in its own migration.

SQLite has no roles: nothing to do there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "shopvault_app"
APPEND_ONLY_TABLES = (
    "access_event",
    "access_event_customer",
    "audit_chain_registry",
    "audit_checkpoint",
)
# Chain heads move on every append; they are never deleted by the application.
NO_DELETE_TABLES = ("audit_chain",)
READ_ONLY_TABLES = ("alembic_version",)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Concurrent migrations (other databases of the same cluster) may race to create it.
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            CREATE ROLE {APP_ROLE} NOLOGIN;
          END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$
        """
    )
    op.execute(
        f"DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO {APP_ROLE}', "
        "current_database()); END $$"
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    # Only the owner makes objects here (PostgreSQL 15 and later already say so).
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    for table in APPEND_ONLY_TABLES:
        op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {APP_ROLE}")
    for table in NO_DELETE_TABLES:
        op.execute(f"REVOKE DELETE, TRUNCATE ON {table} FROM {APP_ROLE}")
    for table in READ_ONLY_TABLES:
        op.execute(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {table} FROM {APP_ROLE}")
    op.execute(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}"
    )
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # The role is the cluster's (other databases may use it): only this database's grants go.
    # CREATE on the schema is not given back to PUBLIC.
    op.execute(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"REVOKE USAGE, SELECT ON SEQUENCES FROM {APP_ROLE}"
    )
    op.execute(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE}"
    )
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    op.execute(
        f"DO $$ BEGIN EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {APP_ROLE}', "
        "current_database()); END $$"
    )
