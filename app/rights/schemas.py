"""The customer's export (disclosure under APPI) and the answers of suspension and erasure."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel

from app.audit.schemas import AccessReportItem
from app.customers.schemas import BillingOut, CustomerView

EXPORT_SCHEMA_VERSION = 1


class ExportDevice(BaseModel):
    model: str
    imei: str


class ExportContract(BaseModel):
    id: str
    line_number: str
    plan: str
    status: Literal["active", "terminated"]
    started_on: date
    ended_on: date | None
    device: ExportDevice
    billing: BillingOut


class ExportVisit(BaseModel):
    id: str
    store: str
    type: str
    opened_at: datetime
    closed_at: datetime | None
    notes: str | None


class ExportRepairStep(BaseModel):
    status: str
    at: datetime


class ExportRepair(BaseModel):
    visit_id: str
    device_model: str
    symptom: str | None
    status: str
    updated_at: datetime | None
    history: list[ExportRepairStep]


class ExportDocument(BaseModel):
    """A paper form the shop keeps about the customer."""

    id: str
    store: str
    form_type: str
    registered_at: datetime
    retain_until: date | None
    disposed_at: datetime | None
    disposal_method: str | None


class ExportConsentChange(BaseModel):
    channel: str
    granted: bool
    at: datetime
    store: str | None
    method: str


class ExportConsents(BaseModel):
    marketing_email: bool
    marketing_sms: bool
    history: list[ExportConsentChange]


class ExportMessage(BaseModel):
    id: str
    channel: str
    template: str
    category: str | None
    status: str
    created_at: datetime
    sent_at: datetime | None
    subject: str | None
    body: str | None


class CustomerExport(BaseModel):
    """Everything held on the customer (the top-level keys are the contract's)."""

    customer: CustomerView
    contracts: list[ExportContract]
    visits: list[ExportVisit]
    repairs: list[ExportRepair]
    documents: list[ExportDocument]
    consents: ExportConsents
    messages: list[ExportMessage]
    access_report: list[AccessReportItem]
    generated_at: datetime
    schema_version: int = EXPORT_SCHEMA_VERSION


class UseState(BaseModel):
    """The customer's state after suspension or resumption of use."""

    id: str
    state: Literal["active", "suspended"]


class Erasure(BaseModel):
    """The tombstone an erasure leaves."""

    id: str
    state: Literal["erased"]
    erased_at: datetime
    # Until when the identity-verification record is kept (null: nothing is kept).
    identity_retained_until: date | None
