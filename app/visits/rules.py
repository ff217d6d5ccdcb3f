"""What a visit is: its types, the repair workflow, and when it counts as open."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from app.config import Settings
from app.models import Visit


class VisitType(StrEnum):
    NEW_CONTRACT = "new_contract"
    MODEL_CHANGE = "model_change"
    PLAN_CHANGE = "plan_change"
    PAYMENT = "payment"
    INQUIRY = "inquiry"
    REPAIR = "repair"
    OTHER = "other"


class RepairStatus(StrEnum):
    RECEIVED = "received"
    DIAGNOSING = "diagnosing"
    REPAIRING = "repairing"
    READY = "ready"
    RETURNED = "returned"


REPAIR_ORDER = list(RepairStatus)

# A repair open this long without a status change shows in the manager's stale list.
STALE_REPAIR_AFTER = timedelta(days=30)

# The service key that encrypts visit notes and repair symptoms.
VISIT_NOTES_KEY = "visit-notes"


def auto_close_at(visit_type: VisitType, opened_at: datetime, hours: float) -> datetime | None:
    """Repair visits stay open until the device is returned; others close themselves."""
    if visit_type is VisitType.REPAIR:
        return None
    return opened_at + timedelta(hours=hours)


def effective_closed_at(visit: Visit, now: datetime) -> datetime | None:
    if visit.closed_at is not None:
        return visit.closed_at
    if visit.auto_close_at is not None and visit.auto_close_at <= now:
        return visit.auto_close_at
    return None


def presence_window(settings: Settings) -> timedelta:
    """How long a proof of presence keeps a (repair) visit justifying access."""
    return timedelta(hours=settings.visit_auto_close_hours)


def presence_within(visit: Visit, now: datetime, window: timedelta) -> bool:
    return visit.presence_at is not None and visit.presence_at > now - window


def is_open(visit: Visit, now: datetime) -> bool:
    return effective_closed_at(visit, now) is None


def may_advance(current: RepairStatus, target: RepairStatus) -> bool:
    return REPAIR_ORDER.index(target) > REPAIR_ORDER.index(current)
