"""Who may message a customer, about what, when, and on which justification.

The role × category table is data (``MESSAGE_SENDERS``), beside the read policy of
``app/policy.py`` but separate from it: a send uses the customer's ``contact`` group on the
caller's behalf without disclosing it, so the caller's read policy row need not include
``contact`` — this table and its visit rules decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from app.models import Visit
from app.policy import WHILE_REPAIR_VISIT_OPEN, Purpose
from app.roles import Role
from app.visits.rules import VisitType, effective_closed_at, presence_within

TOKYO = ZoneInfo("Asia/Tokyo")


class Category(StrEnum):
    IMPORTANT_NOTICE = "important_notice"
    PROCEDURE_GUIDANCE = "procedure_guidance"
    SUPPORT = "support"
    APPOINTMENT = "appointment"
    MARKETING = "marketing"


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


class SendJustification(StrEnum):
    """What must accompany a send besides the purpose."""

    VISIT = "visit"  # a visit for this customer at the caller's store (see visit_justifies)
    REPAIR_VISIT = "repair_visit"  # the same, of type repair
    VISIT_OR_REASON = "visit_or_reason"  # a visit as above, or X-Access-Reason (reviewed)
    PURPOSE = "purpose"  # machine clients: the purpose is the whole justification


@dataclass(frozen=True, slots=True)
class SenderRule:
    categories: frozenset[Category]
    justification: SendJustification
    # The purposes this role sends under; None: any purpose its read policy row allows.
    purposes: frozenset[Purpose] | None = None


C = Category
MESSAGE_SENDERS: Mapping[Role, SenderRule] = {
    Role.SALES: SenderRule(
        frozenset({C.PROCEDURE_GUIDANCE, C.SUPPORT, C.APPOINTMENT}), SendJustification.VISIT
    ),
    Role.TECHNICIAN: SenderRule(
        frozenset({C.SUPPORT, C.APPOINTMENT}), SendJustification.REPAIR_VISIT
    ),
    Role.MANAGER: SenderRule(frozenset(Category), SendJustification.VISIT_OR_REASON),
    Role.BILLING_SYSTEM: SenderRule(
        frozenset({C.PROCEDURE_GUIDANCE}),
        SendJustification.PURPOSE,
        purposes=frozenset({Purpose.BILLING}),
    ),
}

# How long after it closed a visit still justifies a message (a follow-up on a recent visit).
VISIT_LOOKBACK = timedelta(days=14)
# 特定電子メール法 and common courtesy: nothing non-urgent between 21:00 and 08:00 in Japan.
QUIET_FROM = time(21, 0)
QUIET_UNTIL = time(8, 0)
# The longest SMS a Japanese carrier concatenates: 10 parts of 67 UCS-2 characters.
SMS_MAX_LENGTH = 670

PRESENCE_CODE_TTL = timedelta(minutes=5)
PRESENCE_CODES_PER_CUSTOMER = "3/hour"
PRESENCE_CODES_PER_CALLER = "10/hour"


def visit_justifies(
    visit: Visit,
    *,
    role: Role,
    purpose: Purpose,
    justification: SendJustification,
    presence_window: timedelta,
    now: datetime,
) -> bool:
    """A visit (already known to be this customer's, at the caller's store) justifies a send
    while open or within ``VISIT_LOOKBACK`` of closing; a repair visit, open for weeks, only
    within ``presence_window`` of the customer's last proof of presence — except for a
    technician's repair and support messages, which it justifies like any other visit."""
    if justification is SendJustification.REPAIR_VISIT and visit.type != VisitType.REPAIR:
        return False
    closed_at = effective_closed_at(visit, now)
    if closed_at is not None and now - closed_at > VISIT_LOOKBACK:
        return False
    if visit.type != VisitType.REPAIR:
        return True
    if (role, purpose) in WHILE_REPAIR_VISIT_OPEN:
        return True
    return presence_within(visit, now, presence_window)


def is_urgent(role: Role, category: Category, reason: str | None) -> bool:
    """An important notice sent by a manager who gave a reason: sent at night, exempt from the
    daily cap, and the one message a suspended customer still gets."""
    return role is Role.MANAGER and category is Category.IMPORTANT_NOTICE and reason is not None


def in_quiet_hours(now: datetime) -> bool:
    local = now.astimezone(TOKYO).time()
    return local >= QUIET_FROM or local < QUIET_UNTIL


def end_of_quiet_hours(now: datetime) -> datetime:
    """The next 08:00 in Japan (today's if it is still before 08:00)."""
    local = now.astimezone(TOKYO)
    morning = datetime.combine(local.date(), QUIET_UNTIL, tzinfo=TOKYO)
    if local.time() >= QUIET_UNTIL:
        morning += timedelta(days=1)
    return morning


def sms_length(text: str) -> int:
    """Length as carriers count it: UCS-2 code units (a character outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2
