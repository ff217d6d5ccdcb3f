from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, model_validator

from app.kit.schemas import Patch, Strict
from app.validation.fields import Notes, ShortText
from app.visits.rules import RepairStatus, VisitType


class RepairIn(Strict):
    device_model: ShortText
    symptom: Notes


class VisitCreate(Strict):
    type: VisitType
    customer_id: str | None = None
    notes: Notes | None = None
    repair: RepairIn | None = None

    @model_validator(mode="after")
    def _repair_matches_type(self) -> VisitCreate:
        if (self.type is VisitType.REPAIR) != (self.repair is not None):
            raise ValueError("a repair visit carries `repair`; other visits do not")
        return self


class RepairPatch(Strict):
    status: RepairStatus


class VisitPatch(Patch):
    customer_id: str | None = None
    notes: Notes | None = None
    repair: RepairPatch | None = None


class RepairStep(BaseModel):
    status: RepairStatus
    at: datetime
    by: str | None  # the login of who moved it there (null: before the history was kept)


class RepairOut(BaseModel):
    """``symptom`` is free text about a person, and ``history`` goes with it: present only when
    disclosed (see the route)."""

    device_model: str
    symptom: str | None = None
    status: RepairStatus
    updated_at: datetime | None
    history: list[RepairStep] | None = None


class VisitView(BaseModel):
    id: str
    store: str
    type: VisitType
    status: Literal["open", "closed"]
    customer_id: str | None
    opened_at: datetime
    closed_at: datetime | None
    notes: str | None = None  # present only when disclosed (see the route)
    repair: RepairOut | None


class VisitList(BaseModel):
    items: list[VisitView]
    next: str | None
