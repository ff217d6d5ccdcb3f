"""the access log's customer links without a foreign key to their events

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 09:00:00

Each append writes an event's links in the same statement as the event, and ``audit verify``
hashes every event with its links; the foreign key checked each link against its event again, a
look-up and a row lock per link. On PostgreSQL that check runs a plan each connection makes once
and keeps: made while the log was small it is a sequential scan, and every append then read the
whole log once per link (measured: an API process's reads fell to half within a minute of a
fresh database). SQLite rebuilds the table to drop the key; its append-only triggers go with the
old table and are made again.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "access_event_customer"
FOREIGN_KEY = "fk_access_event_customer_event_id_access_event"
_MESSAGE = "the access log is append-only"  # as revision 0005 says it


def _sqlite_triggers() -> None:
    for operation in ("UPDATE", "DELETE"):
        op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_{operation.lower()}")
        op.execute(
            f"CREATE TRIGGER {TABLE}_no_{operation.lower()} BEFORE {operation} ON {TABLE} "
            f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
        )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(FOREIGN_KEY, TABLE, type_="foreignkey")
        return
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")
    _sqlite_triggers()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(FOREIGN_KEY, TABLE, "access_event", ["event_id"], ["id"])
        return
    with op.batch_alter_table(TABLE) as batch:
        batch.create_foreign_key(FOREIGN_KEY, "access_event", ["event_id"], ["id"])
    _sqlite_triggers()
