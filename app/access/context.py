"""The access context: who calls, for which purpose, with which reason and visit, to do what.

Built once per request by one dependency (``app.access.deps``) from the token and the headers,
so that services receive one typed object and no string roles or raw headers travel further.
Header problems are ``400`` (step 2 of the check order), never FastAPI's default ``422``.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from fastapi import Header

from app.audit.events import Actor
from app.auth.tokens import Principal
from app.errors import BadHeader, PurposeRequired
from app.policy import Operation, Purpose
from app.validation.mynumber import contains_individual_number

REASON_MIN, REASON_MAX = 10, 500
_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HEADER_TEXT = re.compile(r"[\x21-\x7e ]*")


@dataclass(frozen=True, slots=True)
class AccessContext:
    principal: Principal
    operation: Operation
    purpose: Purpose
    reason: str | None
    visit_id: str | None
    # An open customer request that justifies a manager's subject_request access.
    subject_request_id: str | None = None

    @property
    def actor(self) -> Actor:
        return self.principal.actor


class PurposeUnknown(PurposeRequired):
    slug, title = "purpose-unknown", "Unknown purpose"
    default_detail = "X-Access-Purpose is not one of the documented purposes."


def parse_purpose(value: str | None) -> Purpose:
    if value is None or not value.strip():
        raise PurposeRequired()
    try:
        return Purpose(value.strip())
    except ValueError:
        raise PurposeUnknown() from None


def parse_reason(value: str | None) -> str | None:
    """Percent-encoded UTF-8, decoded strictly, NFC-normalised, 10 to 500 characters."""
    if value is None:
        return None
    if not _HEADER_TEXT.fullmatch(value) or _PERCENT_ESCAPE.search(value):
        raise BadHeader("X-Access-Reason must be percent-encoded UTF-8.")
    try:
        text = unquote_to_bytes(value).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadHeader("X-Access-Reason must be percent-encoded UTF-8.") from None
    text = unicodedata.normalize("NFC", text).strip()
    if any(unicodedata.category(ch) in {"Cc", "Cf"} for ch in text):
        raise BadHeader("X-Access-Reason may not contain control characters.")
    if not REASON_MIN <= len(text) <= REASON_MAX:
        raise BadHeader(f"X-Access-Reason must be {REASON_MIN} to {REASON_MAX} characters long.")
    if contains_individual_number(text):
        raise BadHeader("X-Access-Reason may not contain an Individual Number (My Number).")
    return text


def parse_visit_id(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise BadHeader("X-Visit-Id must be a visit id.") from None


def parse_subject_request_id(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise BadHeader("X-Subject-Request-Id must be a customer request id.") from None


PURPOSE_HEADER = Header(
    alias="X-Access-Purpose",
    description="Why you access personal data: " + ", ".join(f"`{p.value}`" for p in Purpose),
    json_schema_extra={"enum": [p.value for p in Purpose]},
)
REASON_HEADER = Header(
    alias="X-Access-Reason",
    description="Free text, percent-encoded UTF-8, 10–500 characters once decoded. Required where "
    "the policy says *reason* (a manager without a visit, an auditor).",
)
VISIT_HEADER = Header(
    alias="X-Visit-Id",
    description="The id of an open visit at your store that justifies the access.",
)
SUBJECT_REQUEST_HEADER = Header(
    alias="X-Subject-Request-Id",
    description="The id of an open customer request at your store that justifies a manager's "
    "`subject_request` access (instead of a visit or a reason), for what its kind covers.",
)
