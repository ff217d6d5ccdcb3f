"""Stores, staff, system clients and revoked tokens: who may call the service."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, UTCDateTime, id_column, utcnow


class Store(Base):
    __tablename__ = "store"

    id: Mapped[str] = id_column()
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    opens_at: Mapped[str] = mapped_column(String(5))
    closes_at: Mapped[str] = mapped_column(String(5))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Staff(Base):
    __tablename__ = "staff"

    id: Mapped[str] = id_column()
    login: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(32))
    store_id: Mapped[str | None] = mapped_column(ForeignKey("store.id"), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Bumped on deactivation, password change and role/store change: tokens carry the epoch
    # they were issued under, so older tokens stop matching.
    auth_epoch: Mapped[int] = mapped_column(Integer, default=0)
    # An admin's change that opens a way to customer data waits for an auditor (maker-checker):
    # until then the member cannot log in.
    pending_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set for a password an admin chose (temporary: it must be replaced at the first login, and
    # stops working at this time); none for a password the member chose.
    password_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    store: Mapped[Store | None] = relationship(lazy="joined")


class SystemClient(Base):
    __tablename__ = "system_client"

    id: Mapped[str] = id_column()
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    auth_epoch: Mapped[int] = mapped_column(Integer, default=0)
    # As for staff: a new, re-activated, re-keyed or re-roled client waits for an auditor.
    pending_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class RevokedToken(Base):
    __tablename__ = "revoked_token"

    jti: Mapped[str] = mapped_column(String(36), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
