"""Messages to customers (the outbox) and one-time presence codes sent by SMS."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, id_column, utcnow


class Message(Base):
    """A message to a customer, and its place in the outbox until it is sent or has failed.

    The rendered subject and body are sealed under the customer's profile key; the address is
    not copied here: the worker reads (and decrypts) it from the customer at send time. A row is
    claimed by one worker at a time (``claimed_by`` until ``claim_expires_at``), so a worker
    that dies gives its messages back when the claim expires.
    """

    __tablename__ = "message"
    __table_args__ = (
        Index("ix_message_customer_created", "customer_id", "created_at"),
        Index("ix_message_status_due", "status", "due_at"),
    )

    id: Mapped[str] = id_column()
    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # message|presence_code
    channel: Mapped[str] = mapped_column(String(8))  # email|sms
    template: Mapped[str] = mapped_column(String(64))
    category: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # queued|scheduled|sent|failed
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)

    # Why the customer may be sent this: service_relationship, opt_in (with when it was given),
    # or urgent_reason (with the manager's reason).
    consent_basis: Mapped[str] = mapped_column(String(32))
    consent_given_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    basis_reason: Mapped[str | None] = mapped_column(Text)

    subject_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    body_enc: Mapped[bytes | None] = mapped_column(LargeBinary)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[str | None] = mapped_column(String(36))
    created_by_role: Mapped[str | None] = mapped_column(String(32))
    store_id: Mapped[str | None] = mapped_column(ForeignKey("store.id"))
    visit_id: Mapped[str | None] = mapped_column(String(36))

    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    provider_reference: Mapped[str | None] = mapped_column(String(200))


class PresenceCode(Base):
    """A 6-digit code sent to a customer's phone to prove, on the phone, that it is them.

    Kept only as a keyed hash; valid until ``expires_at``; usable once (``used_at``)."""

    __tablename__ = "presence_code"
    __table_args__ = (Index("ix_presence_code_customer_expires", "customer_id", "expires_at"),)

    id: Mapped[str] = id_column()
    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id", ondelete="CASCADE"))
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    requested_by_id: Mapped[str | None] = mapped_column(String(36))
    message_id: Mapped[str | None] = mapped_column(ForeignKey("message.id", ondelete="SET NULL"))
