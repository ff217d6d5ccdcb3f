"""access events: presence_method, subject_request_id, count (hash encoding v2)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 11:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("presence_method", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("subject_request_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("count", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_event", schema=None) as batch_op:
        batch_op.drop_column("count")
        batch_op.drop_column("subject_request_id")
        batch_op.drop_column("presence_method")
