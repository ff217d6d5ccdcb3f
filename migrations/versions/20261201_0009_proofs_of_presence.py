"""proofs of presence: PIN and document-proof hashes, the visit's last proof

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-01 09:00:00

Customers registered before this revision get their document-proof hash here, which needs the
keys: run it with ``shopvault migrate`` (the service's settings). They have no PIN until they set
one; until then they are attached with their document or a manager's reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer", schema=None) as batch_op:
        batch_op.add_column(sa.Column("proof_salt", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("pin_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("document_hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("visit", schema=None) as batch_op:
        batch_op.add_column(sa.Column("presence_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("presence_method", sa.String(length=32), nullable=True))

    from app.presence.backfill import backfill_document_hashes

    backfill_document_hashes(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("visit", schema=None) as batch_op:
        batch_op.drop_column("presence_method")
        batch_op.drop_column("presence_at")
    with op.batch_alter_table("customer", schema=None) as batch_op:
        batch_op.drop_column("document_hash")
        batch_op.drop_column("pin_hash")
        batch_op.drop_column("proof_salt")
