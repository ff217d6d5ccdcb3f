"""repair history (one row per status reached) and the paper-form register

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "repair_status_change",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("visit_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("changed_by", sa.String(length=36), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["changed_by"], ["staff.id"], name=op.f("fk_repair_status_change_changed_by_staff")
        ),
        sa.ForeignKeyConstraint(
            ["visit_id"], ["visit.id"], name=op.f("fk_repair_status_change_visit_id_visit")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repair_status_change")),
    )
    with op.batch_alter_table("repair_status_change", schema=None) as batch_op:
        batch_op.create_index(
            "ix_repair_status_change_visit_at", ["visit_id", "changed_at"], unique=False
        )

    op.create_table(
        "paper_form",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("store_id", sa.String(length=36), nullable=False),
        sa.Column("visit_id", sa.String(length=36), nullable=False),
        sa.Column("customer_id", sa.String(length=36), nullable=False),
        sa.Column("form_type", sa.String(length=16), nullable=False),
        sa.Column("storage_location", sa.String(length=64), nullable=False),
        sa.Column("registered_by", sa.String(length=36), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retain_until", sa.Date(), nullable=True),
        sa.Column("retention_rule", sa.String(length=32), nullable=False),
        sa.Column("disposed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disposed_by", sa.String(length=36), nullable=True),
        sa.Column("disposal_method", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customer.id"], name=op.f("fk_paper_form_customer_id_customer")
        ),
        sa.ForeignKeyConstraint(
            ["disposed_by"], ["staff.id"], name=op.f("fk_paper_form_disposed_by_staff")
        ),
        sa.ForeignKeyConstraint(
            ["registered_by"], ["staff.id"], name=op.f("fk_paper_form_registered_by_staff")
        ),
        sa.ForeignKeyConstraint(["store_id"], ["store.id"], name=op.f("fk_paper_form_store_id_store")),
        sa.ForeignKeyConstraint(["visit_id"], ["visit.id"], name=op.f("fk_paper_form_visit_id_visit")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_paper_form")),
    )
    with op.batch_alter_table("paper_form", schema=None) as batch_op:
        batch_op.create_index("ix_paper_form_customer", ["customer_id"], unique=False)
        batch_op.create_index(
            "ix_paper_form_store_registered", ["store_id", "registered_at"], unique=False
        )
        batch_op.create_index(
            "ix_paper_form_store_retain", ["store_id", "retain_until"], unique=False
        )

    _backfill_repair_history()


def _backfill_repair_history() -> None:
    """Repair visits opened before the history was kept: ``received`` when the visit opened, by
    whoever opened it, and their current status (if further) when it was last changed, by an
    unknown hand."""
    visit = sa.table(
        "visit",
        sa.column("id", sa.String),
        sa.column("type", sa.String),
        sa.column("opened_by", sa.String),
        sa.column("opened_at", sa.DateTime(timezone=True)),
        sa.column("repair_status", sa.String),
        sa.column("repair_updated_at", sa.DateTime(timezone=True)),
    )
    staff = sa.table("staff", sa.column("id", sa.String))
    history = sa.table(
        "repair_status_change",
        sa.column("id", sa.String),
        sa.column("visit_id", sa.String),
        sa.column("status", sa.String),
        sa.column("changed_by", sa.String),
        sa.column("changed_at", sa.DateTime(timezone=True)),
    )
    bind = op.get_bind()
    known_staff = set(bind.execute(sa.select(staff.c.id)).scalars())
    rows = []
    for visit_id, opened_by, opened_at, status, updated_at in bind.execute(
        sa.select(
            visit.c.id,
            visit.c.opened_by,
            visit.c.opened_at,
            visit.c.repair_status,
            visit.c.repair_updated_at,
        ).where(visit.c.type == "repair")
    ):
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "visit_id": visit_id,
                "status": "received",
                "changed_by": opened_by if opened_by in known_staff else None,
                "changed_at": opened_at,
            }
        )
        if status and status != "received":
            rows.append(
                {
                    "id": str(uuid.uuid4()),
                    "visit_id": visit_id,
                    "status": status,
                    "changed_by": None,
                    "changed_at": updated_at or opened_at,
                }
            )
    if rows:
        op.bulk_insert(history, rows)


def downgrade() -> None:
    with op.batch_alter_table("paper_form", schema=None) as batch_op:
        batch_op.drop_index("ix_paper_form_store_retain")
        batch_op.drop_index("ix_paper_form_store_registered")
        batch_op.drop_index("ix_paper_form_customer")
    op.drop_table("paper_form")

    with op.batch_alter_table("repair_status_change", schema=None) as batch_op:
        batch_op.drop_index("ix_repair_status_change_visit_at")
    op.drop_table("repair_status_change")
