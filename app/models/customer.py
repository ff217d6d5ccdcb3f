"""Customers and what hangs off them. Personal values are stored only as AES-GCM ciphertexts
(``*_enc``) under the customer's data keys; exact-match search goes through keyed hashes
(``*_bidx``)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, id_column, utcnow


class Customer(Base):
    __tablename__ = "customer"

    id: Mapped[str] = id_column()
    state: Mapped[str] = mapped_column(String(16), default="active")  # active|suspended|erased
    # The tombstone of an erased customer: when, under which rule (``subject_request`` for an
    # erasure on request, else a retention rule's key), and until when the identity-verification
    # record is kept (None: nothing kept). Erased values are emptied (b"" / ""), keys destroyed.
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    erasure_rule: Mapped[str | None] = mapped_column(String(32))
    identity_retain_until: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    created_store_id: Mapped[str | None] = mapped_column(ForeignKey("store.id"))

    # The identity-verification record (identity key): kept as long as the law requires.
    name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    name_kana_enc: Mapped[bytes] = mapped_column(LargeBinary)
    date_of_birth_enc: Mapped[bytes] = mapped_column(LargeBinary)
    postal_code_enc: Mapped[bytes] = mapped_column(LargeBinary)
    address_enc: Mapped[bytes] = mapped_column(LargeBinary)
    document_type: Mapped[str] = mapped_column(String(32))
    document_number_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    document_verified_at: Mapped[datetime] = mapped_column(UTCDateTime)
    document_verified_store_id: Mapped[str | None] = mapped_column(ForeignKey("store.id"))

    # Everything else (profile key).
    phone_enc: Mapped[bytes] = mapped_column(LargeBinary)
    email_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    marketing_email: Mapped[bool] = mapped_column(Boolean, default=False)
    marketing_sms: Mapped[bool] = mapped_column(Boolean, default=False)

    # Proofs of presence, as keyed hashes only (app/presence/proofs.py), with their salt.
    proof_salt: Mapped[bytes | None] = mapped_column(LargeBinary)
    pin_hash: Mapped[str | None] = mapped_column(String(64))
    document_hash: Mapped[str | None] = mapped_column(String(64))

    phone_bidx: Mapped[str] = mapped_column(String(80), index=True)
    email_bidx: Mapped[str | None] = mapped_column(String(80), index=True)
    kana_birth_bidx: Mapped[str] = mapped_column(String(80), index=True)


class CustomerKey(Base):
    """A customer's data key for one scope, masked by their bucket's shred key and wrapped by the
    master key (``app/vault.py``). Deleting it, and then the shred key version, erases."""

    __tablename__ = "customer_key"
    # Rotation finds the data keys of a superseded master key, and counts them before retiring it;
    # erasure finds the other keys of a bucket, to move them to the bucket's next shred key.
    __table_args__ = (
        Index("ix_customer_key_master_key_id", "master_key_id"),
        Index("ix_customer_key_shred_bucket", "shred_bucket"),
    )

    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # identity|profile
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(16))
    # ``app.shred_keys.bucket_of(customer_id)``; None: stored unmasked, before shred keys.
    shred_bucket: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ShredBucket(Base):
    """The current version of each bucket's shred key (the keys themselves are outside the
    database). Creating a customer reads it under a share lock; erasure moves it on — at once,
    or (``purge``) once per run for every bucket it marked ``pending``."""

    __tablename__ = "shred_bucket"

    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer)
    pending: Mapped[bool] = mapped_column(Boolean, default=False)


class ConsentEvent(Base):
    """The history of marketing consents: when, where, how and by whom given or withdrawn."""

    __tablename__ = "consent_event"
    __table_args__ = (Index("ix_consent_event_customer_at", "customer_id", "at"),)

    id: Mapped[str] = id_column()
    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id"))
    channel: Mapped[str] = mapped_column(String(8))  # email|sms
    granted: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    store_id: Mapped[str | None] = mapped_column(ForeignKey("store.id"))
    visit_id: Mapped[str | None] = mapped_column(String(36))
    method: Mapped[str] = mapped_column(String(32))
    recorded_by: Mapped[str | None] = mapped_column(String(64))


class Contract(Base):
    __tablename__ = "contract"
    __table_args__ = (Index("ix_contract_customer_started", "customer_id", "started_on"),)

    id: Mapped[str] = id_column()
    customer_id: Mapped[str] = mapped_column(ForeignKey("customer.id"))
    line_number_enc: Mapped[bytes] = mapped_column(LargeBinary)
    plan: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active|terminated
    started_on: Mapped[date] = mapped_column(Date)
    ended_on: Mapped[date | None] = mapped_column(Date)
    device_model: Mapped[str] = mapped_column(String(100))
    imei_enc: Mapped[bytes] = mapped_column(LargeBinary)
    payment_method: Mapped[str] = mapped_column(String(32))
    account_last4: Mapped[str | None] = mapped_column(String(4))
    store_id: Mapped[str | None] = mapped_column(ForeignKey("store.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
