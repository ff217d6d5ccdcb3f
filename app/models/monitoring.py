"""What auditors add beside the access log: alerts and reviews. Neither is ever written into an
access event; both refer to events and actors by name only (no foreign keys into the log, which
retention prunes)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, id_column


class Alert(Base):
    """One open alert per rule, actor, subject and window; its count and last_at grow."""

    __tablename__ = "audit_alert"
    __table_args__ = (
        Index(
            "uq_audit_alert_open",
            "rule",
            "actor_key",
            "subject",
            "window_start",
            unique=True,
            postgresql_where=text("status = 'open'"),
            sqlite_where=text("status = 'open'"),
        ),
        Index("ix_audit_alert_last_at", "last_at"),
    )

    id: Mapped[str] = id_column()
    rule: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(64))
    # The actor as a key ('' for an unknown caller, e.g. failed logins with an unknown login).
    actor_key: Mapped[str] = mapped_column(String(64))
    role: Mapped[str | None] = mapped_column(String(32))
    store: Mapped[str | None] = mapped_column(String(16))
    # What else the alert is about, e.g. "customer:<id>" for a customer's failed proofs.
    subject: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(8))  # open|resolved
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    count: Mapped[int] = mapped_column(Integer)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    # When the worker told the compliance mailbox (SHOPVAULT_ALERT_EMAIL) that it opened.
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AccessReview(Base):
    """An auditor's decision on an access queued for review (a manager's look without a visit)."""

    __tablename__ = "access_review"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))  # ok|escalate
    note: Mapped[str] = mapped_column(Text)
    reviewed_by: Mapped[str] = mapped_column(String(64))
    reviewed_by_id: Mapped[str | None] = mapped_column(String(36))
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime)
