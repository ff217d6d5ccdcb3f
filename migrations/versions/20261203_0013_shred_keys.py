"""shred keys: customer data keys masked by a key kept outside the database

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-03 09:00:00

``shred_bucket`` holds the current version of each bucket's shred key (the keys are in the shred
key file, ``app/shred_keys.py``), and whether an erasure by ``purge`` left it to move on later
(``pending``); every bucket starts at version 1. ``customer_key.shred_bucket``
names the bucket of a masked data key (NULL: stored unmasked, before this revision; the next
``shopvault keys rotate`` masks those).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUCKETS = 4096  # app.shred_keys.BUCKETS when this revision was written
FIRST_VERSION = 1


def upgrade() -> None:
    buckets = op.create_table(
        "shred_bucket",
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("pending", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", name=op.f("pk_shred_bucket")),
    )
    op.bulk_insert(
        buckets,
        [{"bucket": b, "version": FIRST_VERSION, "pending": False} for b in range(BUCKETS)],
    )
    # Not in batch mode: on SQLite that copies the table and drops its triggers (0006's).
    op.add_column("customer_key", sa.Column("shred_bucket", sa.Integer(), nullable=True))
    op.create_index("ix_customer_key_shred_bucket", "customer_key", ["shred_bucket"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_customer_key_shred_bucket", table_name="customer_key")
    # SQLite (3.35 and later) drops a column in place, keeping the table's triggers.
    op.execute("ALTER TABLE customer_key DROP COLUMN shred_bucket")
    op.drop_table("shred_bucket")
