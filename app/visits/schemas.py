from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

from app.kit.ids import canonical_id
from app.kit.schemas import Patch, Strict
from app.presence.schemas import Presence
from app.validation.fields import Notes, ShortText
from app.visits.rules import RepairStatus, VisitType


def _canonical(value: str) -> str:
    canonical = canonical_id(value)
    if canonical is None:
        raise ValueError("a customer id")
    return canonical


CustomerId = Annotated[str, StringConstraints(max_length=64), AfterValidator(_canonical)]


class RepairIn(Strict):
    device_model: ShortText
    symptom: Notes


class VisitCreate(Strict):
    type: VisitType
    customer_id: CustomerId | None = None
    presence: Presence | None = Field(
        default=None,
        description="With `customer_id`: the customer's proof of presence (a manager may send "
        "X-Access-Reason instead).",
    )
    notes: Notes | None = None
    repair: RepairIn | None = None

    @model_validator(mode="after")
    def _consistent(self) -> VisitCreate:
        if (self.type is VisitType.REPAIR) != (self.repair is not None):
            raise ValueError("a repair visit carries `repair`; other visits do not")
        if self.presence is not None and self.customer_id is None:
            raise ValueError("`presence` goes with `customer_id`")
        return self


class RepairPatch(Strict):
    status: RepairStatus


class VisitPatch(Patch):
    nullable: ClassVar[frozenset[str]] = frozenset({"notes"})  # null clears the notes

    customer_id: CustomerId | None = None
    presence: Presence | None = None
    notes: Notes | None = None
    repair: RepairPatch | None = None

    @model_validator(mode="after")
    def _presence_with_customer(self) -> VisitPatch:
        if self.presence is not None and self.customer_id is None:
            raise ValueError("`presence` goes with `customer_id`")
        return self


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
