"""customers' requests (APPI) and the erased customer's tombstone

Revision ID: 0010
Revises: 0012
Create Date: 2026-12-02 09:00:00

Adds ``subject_request`` and, on ``customer``, when and under which rule it was erased and until
when its identity-verification record is kept. Columns are only added (no table is rebuilt on
SQLite, so the triggers and foreign keys of other tables are untouched).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("erasure_rule", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("identity_retain_until", sa.Date(), nullable=True))

    op.create_table(
        "subject_request",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("store_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("identity_check", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("review_required", sa.Boolean(), nullable=False),
        sa.Column("visit_id", sa.String(length=36), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_by", sa.String(length=36), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=36), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_subject_request_customer_id_customer")
        ),
        sa.ForeignKeyConstraint(
            ["store_id"], ["store.id"], name=op.f("fk_subject_request_store_id_store")
        ),
        sa.ForeignKeyConstraint(
            ["received_by"], ["staff.id"], name=op.f("fk_subject_request_received_by_staff")
        ),
        sa.ForeignKeyConstraint(
            ["closed_by"], ["staff.id"], name=op.f("fk_subject_request_closed_by_staff")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_request")),
    )
    with op.batch_alter_table("subject_request", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subject_request_store_status_due", ["store_id", "status", "due_on"], unique=False
        )
        batch_op.create_index("ix_subject_request_customer", ["customer_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subject_request", schema=None) as batch_op:
        batch_op.drop_index("ix_subject_request_customer")
        batch_op.drop_index("ix_subject_request_store_status_due")
    op.drop_table("subject_request")
    with op.batch_alter_table("customer", schema=None) as batch_op:
        batch_op.drop_column("identity_retain_until")
        batch_op.drop_column("erasure_rule")
        batch_op.drop_column("erased_at")
