"""The paper-form register: forms filled in at a visit, where they are kept, until when, and
how they were disposed of. A form belongs to the customer of its visit; the register holds no
personal data beyond the customer's id."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, id_column, utcnow


class PaperForm(Base):
    __tablename__ = "paper_form"
    __table_args__ = (
        Index("ix_paper_form_store_registered", "store_id", "registered_at"),
        Index("ix_paper_form_store_retain", "store_id", "retain_until"),
        Index("ix_paper_form_customer", "customer_id"),
    )

    id: Mapped[str] = id_column()
    store_id: Mapped[str] = mapped_column(ForeignKey("store.id"))
    visit_id: Mapped[str] = mapped_column(ForeignKey("visit.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id"))
    form_type: Mapped[str] = mapped_column(String(16))
    storage_location: Mapped[str] = mapped_column(String(64))
    registered_by: Mapped[str] = mapped_column(ForeignKey("staff.id"))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # None: kept while its basis lasts (an active contract, a granted consent).
    retain_until: Mapped[date | None] = mapped_column(Date)
    retention_rule: Mapped[str] = mapped_column(String(32))
    disposed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disposed_by: Mapped[str | None] = mapped_column(ForeignKey("staff.id"))
    disposal_method: Mapped[str | None] = mapped_column(String(16))
