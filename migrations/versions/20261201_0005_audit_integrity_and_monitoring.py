"""audit integrity and monitoring: authenticated heads, chain registry, checkpoints, append-only
triggers, alerts and reviews

Revision ID: 0005
Revises: 0009
Create Date: 2026-12-01 09:00:00

Chains written before this revision are registered and their heads authenticated here, with the
keys of the environment the migration runs in (the service's own: ``shopvault migrate``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_TABLES = (
    "access_event",
    "access_event_customer",
    "audit_chain_registry",
    "audit_checkpoint",
)
_MESSAGE = "the access log is append-only"


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"RAISE EXCEPTION '{_MESSAGE} (% on %)', TG_OP, TG_TABLE_NAME "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        for table in APPEND_ONLY_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
            )
        return
    for table in APPEND_ONLY_TABLES:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
            )


def _drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in APPEND_ONLY_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS audit_append_only()")
        return
    for table in APPEND_ONLY_TABLES:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{operation}")


def _authenticate_existing_chains() -> None:
    """Register the chains that exist already and put a MAC on their heads."""
    bind = op.get_bind()
    heads = bind.execute(sa.text("SELECT chain, seq, head_hash FROM audit_chain")).all()
    if not heads:
        return
    from app.audit.chain import AuditKeys
    from app.config import Settings
    from app.keys import load_keys
    from app.models.base import UTCDateTime, utcnow

    keys = AuditKeys.derive(load_keys(Settings()).index)
    first_at = sa.text("SELECT at FROM access_event WHERE chain = :chain AND seq = 1").columns(
        sa.column("at", UTCDateTime())
    )
    register = sa.text(
        "INSERT INTO audit_chain_registry (chain, registered_at, mac) VALUES (:chain, :at, :mac)"
    ).bindparams(sa.bindparam("at", type_=UTCDateTime()))
    for chain, seq, head_hash in heads:
        at = bind.execute(first_at, {"chain": chain}).scalar() or utcnow()
        bind.execute(register, {"chain": chain, "at": at, "mac": keys.registry_mac(chain, at)})
        bind.execute(
            sa.text("UPDATE audit_chain SET mac = :mac WHERE chain = :chain"),
            {"chain": chain, "mac": keys.head_mac(chain, seq, head_hash)},
        )


def upgrade() -> None:
    with op.batch_alter_table("audit_chain", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("mac", sa.String(length=64), nullable=False, server_default="")
        )
    with op.batch_alter_table("audit_chain", schema=None) as batch_op:
        batch_op.alter_column("mac", server_default=None)

    op.create_table(
        "audit_chain_registry",
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_chain_registry")),
    )
    op.create_table(
        "audit_checkpoint",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_audit_checkpoint")),
    )
    with op.batch_alter_table("audit_checkpoint", schema=None) as batch_op:
        batch_op.create_index("ix_audit_checkpoint_n", ["n"], unique=False)

    op.create_table(
        "audit_alert",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("actor_key", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("store", sa.String(length=16), nullable=True),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_alert")),
    )
    with op.batch_alter_table("audit_alert", schema=None) as batch_op:
        batch_op.create_index("ix_audit_alert_last_at", ["last_at"], unique=False)
        batch_op.create_index(
            "uq_audit_alert_open",
            ["rule", "actor_key", "subject", "window_start"],
            unique=True,
            postgresql_where=sa.text("status = 'open'"),
            sqlite_where=sa.text("status = 'open'"),
        )

    op.create_table(
        "access_review",
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reviewed_by", sa.String(length=64), nullable=False),
        sa.Column("reviewed_by_id", sa.String(length=36), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_access_review")),
    )
    # Reviews are found by event; events queued for review are found by their flag.
    with op.batch_alter_table("access_event", schema=None) as batch_op:
        batch_op.create_index(
            "ix_access_event_review",
            ["at"],
            unique=False,
            postgresql_where=sa.text("review_required"),
            sqlite_where=sa.text("review_required"),
        )

    _authenticate_existing_chains()
    _create_triggers()


def downgrade() -> None:
    _drop_triggers()
    with op.batch_alter_table("access_event", schema=None) as batch_op:
        batch_op.drop_index("ix_access_event_review")
    op.drop_table("access_review")
    with op.batch_alter_table("audit_alert", schema=None) as batch_op:
        batch_op.drop_index("uq_audit_alert_open")
        batch_op.drop_index("ix_audit_alert_last_at")
    op.drop_table("audit_alert")
    with op.batch_alter_table("audit_checkpoint", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_checkpoint_n")
    op.drop_table("audit_checkpoint")
    op.drop_table("audit_chain_registry")
    with op.batch_alter_table("audit_chain", schema=None) as batch_op:
        batch_op.drop_column("mac")
