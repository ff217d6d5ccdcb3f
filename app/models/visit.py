"""Visits (receptions): the shop's own record that a customer is being served, which is what
justifies a store employee's access to that customer."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, id_column, utcnow


class Visit(Base):
    __tablename__ = "visit"
    __table_args__ = (
        Index("ix_visit_store_open", "store_id", "closed_at"),
        Index("ix_visit_customer", "customer_id"),
    )

    id: Mapped[str] = id_column()
    store_id: Mapped[str] = mapped_column(ForeignKey("store.id"))
    type: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customer.id"))
    opened_by: Mapped[str] = mapped_column(String(36))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Non-repair visits close themselves at this time; repair visits stay open until returned.
    auto_close_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notes_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The customer's last proof of presence within this visit, and how it was given: a repair
    # visit justifies most access only within VISIT_AUTO_CLOSE_HOURS of it.
    presence_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    presence_method: Mapped[str | None] = mapped_column(String(32))

    repair_device_model: Mapped[str | None] = mapped_column(String(100))
    repair_symptom_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    repair_status: Mapped[str | None] = mapped_column(String(16))
    repair_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ServiceKey(Base):
    """Data keys that belong to no customer (visit notes written before a customer is known)."""

    __tablename__ = "service_key"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotentRequest(Base):
    """A POS retry with the same ``Idempotency-Key`` gets the first answer, not a second record.

    Only the resource id is kept (the answer is rebuilt from it), never a response body."""

    __tablename__ = "idempotent_request"

    caller_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    route: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(80))
    resource_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class RepairStatusChange(Base):
    """The repair history: each status a repair visit reached, who moved it there and when
    (``received`` is written when the visit opens). ``changed_by`` is empty only for steps
    taken before the history was kept."""

    __tablename__ = "repair_status_change"
    __table_args__ = (Index("ix_repair_status_change_visit_at", "visit_id", "changed_at"),)

    id: Mapped[str] = id_column()
    visit_id: Mapped[str] = mapped_column(ForeignKey("visit.id"))
    status: Mapped[str] = mapped_column(String(16))
    changed_by: Mapped[str | None] = mapped_column(ForeignKey("staff.id"))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
