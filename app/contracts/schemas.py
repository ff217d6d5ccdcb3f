"""Contract bodies. An answer carries only the groups of the caller's policy row (``contracts``,
``device``, ``billing``): keys of other groups are absent, not null."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.customers.schemas import BillingOut, DeviceOut
from app.kit.schemas import Strict
from app.policy import FieldGroup
from app.validation.fields import Digits4, Phone, ShortText


class DeviceIn(Strict):
    model: ShortText
    imei: Annotated[str, Field(pattern=r"^[0-9]{15}$")]


class BillingIn(Strict):
    payment_method: Literal["credit_card", "bank_transfer", "convenience_store"]
    account_last4: Digits4 | None = None


class ContractCreate(Strict):
    line_number: Phone
    plan: ShortText
    device: DeviceIn
    billing: BillingIn
    started_on: date | None = None


class ContractPatch(Strict):
    status: Literal["terminated"]
    ended_on: date | None = None


class ContractView(BaseModel):
    """``fields`` lists the groups present; ``device`` and ``billing`` only when disclosed."""

    id: str
    customer_id: str
    fields: list[FieldGroup]
    line_number: str
    plan: str
    status: Literal["active", "terminated"]
    started_on: date
    ended_on: date | None
    device: DeviceOut | None = None
    billing: BillingOut | None = None
