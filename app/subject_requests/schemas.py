"""A customer's request (APPI) as callers send and see it."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel

from app.kit.schemas import Strict
from app.policy import SubjectRequestKind


class RequestChannel(StrEnum):
    STORE = "store"
    MAIL = "mail"
    PHONE = "phone"


class IdentityCheck(StrEnum):
    """How the requester was identified as the customer."""

    DOCUMENT = "document"
    PIN = "pin"
    SMS_CODE = "sms_code"
    MAIL_CERTIFICATE = "mail_certificate"  # a request by post with a certified copy


class RequestOutcome(StrEnum):
    FULFILLED = "fulfilled"
    PARTIALLY_FULFILLED = "partially_fulfilled"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"


class SubjectRequestCreate(Strict):
    kind: SubjectRequestKind
    channel: RequestChannel
    identity_check: IdentityCheck


class SubjectRequestClose(Strict):
    outcome: RequestOutcome


class SubjectRequestView(BaseModel):
    id: str
    customer_id: str
    store: str
    kind: SubjectRequestKind
    channel: RequestChannel
    identity_check: IdentityCheck
    status: str  # open|closed
    review_required: bool
    received_at: datetime
    due_on: date
    overdue: bool
    closed_at: datetime | None
    outcome: RequestOutcome | None


class SubjectRequestList(BaseModel):
    items: list[SubjectRequestView]
    next: str | None
