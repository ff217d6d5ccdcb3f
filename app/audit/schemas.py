"""What auditors send and get: access events, verification results, alerts, reviews, and the
customer's access report."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.kit.schemas import Strict
from app.validation.fields import Notes


class AccessEventOut(BaseModel):
    """An access event, every field covered by its hash."""

    id: str
    at: datetime
    actor: str | None = Field(description="The staff login or the system client's name.")
    role: str | None
    store: str | None
    terminal: str | None
    purpose: str | None
    reason: str | None
    action: str
    resource: str
    customer_ids: list[str]
    fields: list[str] = Field(description="The field groups disclosed or used.")
    changed_fields: list[str] | None = Field(description="For updates: names, never values.")
    result_count: int | None = Field(description="For searches.")
    outcome: Literal["allowed", "denied"]
    review_required: bool
    presence_method: str | None
    subject_request_id: str | None
    count: int | None = Field(description="A rate-limit summary: the refusals it stands for.")
    request_id: str
    chain: str
    seq: int
    hash: str
    prev_hash: str


class AccessEventPage(BaseModel):
    items: list[AccessEventOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class VerificationProblem(BaseModel):
    problem: Literal[
        "tail-truncated", "chain-missing", "chain-unregistered", "hash-mismatch", "seq-gap"
    ]
    chain: str
    seq: int | None
    event_id: str | None


class VerificationOut(BaseModel):
    ok: bool
    checked: int = Field(description="Events checked.")
    first_bad_id: str | None = Field(description="The earliest event found bad, if any.")
    problems: list[VerificationProblem]


class AlertOut(BaseModel):
    id: str
    rule: str
    actor: str | None
    store: str | None
    status: Literal["open", "resolved"]
    first_at: datetime
    last_at: datetime
    count: int


class AlertPage(BaseModel):
    items: list[AlertOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class AlertResolve(Strict):
    note: Notes = Field(min_length=1, examples=["店長に確認済み。棚卸し作業のための閲覧。"])


class ReviewCreate(Strict):
    decision: Literal["ok", "escalate"]
    note: Notes = Field(min_length=1, examples=["電話での住所変更依頼に対応した記録を確認。"])


class ReviewOut(BaseModel):
    event_id: str
    decision: Literal["ok", "escalate"]
    note: str
    reviewed_by: str
    reviewed_at: datetime


class ReviewItem(BaseModel):
    event: AccessEventOut
    review: ReviewOut | None = Field(description="Null while the access awaits review.")


class ReviewPage(BaseModel):
    items: list[ReviewItem]
    next: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class AccessReportItem(BaseModel):
    at: datetime
    store: str | None = Field(description="The store code of the employee's store.")
    role: str | None
    purpose: str | None
    fields: list[str]
    outcome: Literal["allowed", "denied"]


class ReportStore(BaseModel):
    code: str
    name: str


class AccessReport(BaseModel):
    """Every access to the customer's data in the period (oldest first): when, which store,
    which role, why, which field groups, and whether it was allowed — never who by name."""

    customer_id: str
    store: ReportStore | None = Field(description="The shop that issues the report.")
    period_from: datetime | None = Field(alias="from", serialization_alias="from")
    period_to: datetime | None = Field(alias="to", serialization_alias="to")
    generated_at: datetime
    items: list[AccessReportItem]

    model_config = ConfigDict(populate_by_name=True)
