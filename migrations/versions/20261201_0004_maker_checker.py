"""maker-checker: pending approval of staff and clients; temporary passwords

Revision ID: 0004
Revises: 0007
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "pending_approval", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        batch_op.add_column(sa.Column("password_expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("system_client", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "pending_approval", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("system_client", schema=None) as batch_op:
        batch_op.drop_column("pending_approval")
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.drop_column("password_expires_at")
        batch_op.drop_column("pending_approval")
