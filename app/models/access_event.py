"""The access log: append-only, hash-chained, and never cascaded into from customer data."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, id_column


class AccessEvent(Base):
    __tablename__ = "access_event"
    __table_args__ = (
        UniqueConstraint("chain", "seq", name="uq_access_event_chain_seq"),
        Index("ix_access_event_at", "at"),
        Index("ix_access_event_actor_at", "actor", "at"),
        Index("ix_access_event_store_at", "store", "at"),
        Index(
            "ix_access_event_review",
            "at",
            postgresql_where=text("review_required"),
            sqlite_where=text("review_required"),
        ),
    )

    id: Mapped[str] = id_column()
    chain: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(64))
    actor_id: Mapped[str | None] = mapped_column(String(36))
    role: Mapped[str | None] = mapped_column(String(32))
    store: Mapped[str | None] = mapped_column(String(16))
    terminal: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16))
    resource: Mapped[str] = mapped_column(String(200))
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    changed_fields: Mapped[list[str] | None] = mapped_column(JSON)
    result_count: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(8))
    denial: Mapped[str | None] = mapped_column(String(64))
    review_required: Mapped[bool] = mapped_column(Boolean, default=False)
    # How presence was proven for an attach (pin, identity_document, sms_code, manager_reason;
    # registered on a create), never the proof itself.
    presence_method: Mapped[str | None] = mapped_column(String(32))
    # The customer request that justified a manager's subject_request access.
    subject_request_id: Mapped[str | None] = mapped_column(String(36))
    # A rate-limit summary: how many refusals this one event stands for.
    count: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str] = mapped_column(String(64))
    encoding_version: Mapped[int] = mapped_column(SmallInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AccessEventCustomer(Base):
    """Which customers an event concerns; no foreign key to the customer, which may be erased,
    nor to the event: the append writes both in one statement and verification hashes every
    event with its links (a foreign key only checked each link again; revision 0014)."""

    __tablename__ = "access_event_customer"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    position: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(36), index=True)


class AuditChain(Base):
    """The head of each hash chain: its last sequence number and hash, authenticated by a MAC
    under a key kept outside the database (updated on every append, so not append-only)."""

    __tablename__ = "audit_chain"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class AuditChainRegistry(Base):
    """Every chain, registered (append-only, MAC'd) in the transaction of its first event: a
    chain deleted with its head row is still named here."""

    __tablename__ = "audit_chain_registry"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    mac: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """The database's copy of the checkpoint file's lines (append-only): each line verbatim."""

    __tablename__ = "audit_checkpoint"
    __table_args__ = (Index("ix_audit_checkpoint_n", "n"),)

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    line: Mapped[str] = mapped_column(Text)
