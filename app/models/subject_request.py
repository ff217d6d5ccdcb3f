"""Customers' requests under APPI (disclosure, correction, suspension, deletion, access log):
registered by a store's manager, due by a date, closed with an outcome. A request holds no
personal data beyond the customer's id."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, id_column, utcnow


class SubjectRequest(Base):
    __tablename__ = "subject_request"
    __table_args__ = (
        Index("ix_subject_request_store_status_due", "store_id", "status", "due_on"),
        Index("ix_subject_request_customer", "customer_id"),
    )

    id: Mapped[str] = id_column()
    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id"))
    store_id: Mapped[str] = mapped_column(ForeignKey("store.id"))
    kind: Mapped[str] = mapped_column(String(16))  # disclosure|correction|suspension|deletion|…
    channel: Mapped[str] = mapped_column(String(8))  # store|mail|phone
    identity_check: Mapped[str] = mapped_column(String(20))  # document|pin|sms_code|…
    status: Mapped[str] = mapped_column(String(8), default="open")  # open|closed
    # Registered on a manager's reason alone (no visit with the customer's proof of presence).
    review_required: Mapped[bool] = mapped_column(Boolean, default=False)
    visit_id: Mapped[str | None] = mapped_column(String(36))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    received_by: Mapped[str] = mapped_column(ForeignKey("staff.id"))
    due_on: Mapped[date] = mapped_column(Date)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(ForeignKey("staff.id"))
    outcome: Mapped[str | None] = mapped_column(String(16))
