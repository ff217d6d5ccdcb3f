"""master key ring: superseded and retired master keys; no data key under a retired one

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-01 10:00:00

A data key row (``customer_key``, ``service_key``) that names a retired master key is refused
by a trigger, on insert and on update. Note for later migrations: SQLite batch mode recreates a
table and drops its triggers; a migration that batch-alters either table must create them again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_TABLES = ("customer_key", "service_key")
RETIRED = (
    "EXISTS (SELECT 1 FROM master_key_retirement"
    " WHERE id = NEW.master_key_id AND retired_at IS NOT NULL)"
)

POSTGRES_FUNCTION = f"""
CREATE FUNCTION refuse_retired_master_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF {RETIRED} THEN
        RAISE EXCEPTION 'a data key may not be wrapped by a retired master key'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "master_key_retirement",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_master_key_retirement")),
    )
    with op.batch_alter_table("customer_key", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_customer_key_master_key_id"), ["master_key_id"], unique=False
        )

    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_FUNCTION)
        for table in KEY_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_live_master_key"
                f" BEFORE INSERT OR UPDATE OF master_key_id, wrapped_key ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION refuse_retired_master_key()"
            )
        return
    for table in KEY_TABLES:
        for event, name in (("INSERT", "insert"), ("UPDATE OF master_key_id, wrapped_key", "update")):
            op.execute(
                f"CREATE TRIGGER {table}_live_master_key_{name} BEFORE {event} ON {table}"
                f" WHEN {RETIRED}"
                " BEGIN SELECT RAISE(ABORT, 'a data key may not be wrapped by a retired master key');"
                " END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in KEY_TABLES:
            op.execute(f"DROP TRIGGER {table}_live_master_key ON {table}")
        op.execute("DROP FUNCTION refuse_retired_master_key()")
    else:
        for table in KEY_TABLES:
            for name in ("insert", "update"):
                op.execute(f"DROP TRIGGER {table}_live_master_key_{name}")
    with op.batch_alter_table("customer_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customer_key_master_key_id"))
    op.drop_table("master_key_retirement")
