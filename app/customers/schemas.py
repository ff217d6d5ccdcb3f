"""Customer and contract bodies. Inputs normalise themselves; outputs carry only the groups
the policy disclosed (fields of other groups are absent, not null)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

from app.kit.schemas import Patch, Strict
from app.policy import FieldGroup
from app.presence.proofs import weak_pin_reason
from app.presence.schemas import Pin
from app.validation.documents import DocumentType, normalise_document_number
from app.validation.email import normalise_email
from app.validation.fields import (
    Address,
    BirthDate,
    Kana,
    PersonName,
    Phone,
    PostalCode,
)


def _email(text: str) -> str:
    return normalise_email(text)[0]


Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_email)]


class IdentityDocumentIn(Strict):
    """``number`` is normalised per type; ``None`` for types that may keep no number."""

    type: DocumentType
    number: Annotated[str, StringConstraints(max_length=32)] | None = None

    @model_validator(mode="after")
    def _number_fits_type(self) -> IdentityDocumentIn:
        self.number = normalise_document_number(self.type, self.number)
        return self


class ConsentsIn(Strict):
    marketing_email: bool = False
    marketing_sms: bool = False


class CustomerCreate(Strict):
    name: PersonName
    name_kana: Kana
    date_of_birth: BirthDate
    postal_code: PostalCode
    address: Address
    phone: Phone
    email: Email | None = None
    identity_document: IdentityDocumentIn
    consents: ConsentsIn = Field(default_factory=ConsentsIn)
    pin: Pin = Field(
        description="The customer's 4-digit PIN (暗証番号), chosen by them on the keypad: their "
        "proof of presence at later visits. Kept only as a keyed hash; never returned."
    )

    @model_validator(mode="after")
    def _pin_not_weak(self) -> CustomerCreate:
        reason = weak_pin_reason(self.pin, date_of_birth=self.date_of_birth, phone_e164=self.phone)
        if reason is not None:
            raise ValueError(reason)
        return self


class ConsentsPatch(Strict):
    marketing_email: bool | None = None
    marketing_sms: bool | None = None


class CustomerPatch(Patch):
    """A correction: only the fields sent change; the access event names them, never values."""

    nullable: ClassVar[frozenset[str]] = frozenset({"email"})  # only email may be removed

    name: PersonName | None = None
    name_kana: Kana | None = None
    date_of_birth: BirthDate | None = None
    postal_code: PostalCode | None = None
    address: Address | None = None
    phone: Phone | None = None
    email: Email | None = None
    consents: ConsentsPatch | None = None
    pin: Pin | None = Field(
        default=None,
        description="A new PIN: only with X-Visit-Id of a visit where the customer proved "
        "presence (or a manager attached them with a reason).",
    )


class IdentityDocumentOut(BaseModel):
    type: DocumentType
    number_last4: str | None
    verified_at: datetime
    verified_store: str | None


class ContractOut(BaseModel):
    id: str
    line_number: str
    plan: str
    status: Literal["active", "terminated"]
    started_on: date
    ended_on: date | None


class DeviceOut(BaseModel):
    contract_id: str
    model: str
    imei_last4: str


class BillingOut(BaseModel):
    payment_method: str
    account_last4: str | None


class ConsentsOut(BaseModel):
    marketing_email: bool
    marketing_sms: bool


class VisitSummary(BaseModel):
    id: str
    store: str
    type: str
    opened_at: datetime
    closed_at: datetime | None


class RepairOut(BaseModel):
    visit_id: str
    device_model: str
    symptom: str
    status: str
    updated_at: datetime | None


class CustomerView(BaseModel):
    """A customer as the policy disclosed it: ``fields`` lists the groups present."""

    id: str
    fields: list[FieldGroup]
    name: str | None = None
    name_kana: str | None = None
    phone: str | None = None
    email: str | None = None
    postal_code: str | None = None
    address: str | None = None
    date_of_birth: date | None = None
    identity_document: IdentityDocumentOut | None = None
    document_number: str | None = None
    contracts: list[ContractOut] | None = None
    devices: list[DeviceOut] | None = None
    billing: BillingOut | None = None
    consents: ConsentsOut | None = None
    visits: list[VisitSummary] | None = None
    repairs: list[RepairOut] | None = None


class SearchRequest(Strict):
    """Exactly one criterion: ``phone``; or ``email``; or ``name_kana`` with ``date_of_birth``."""

    phone: Phone | None = None
    email: Email | None = None
    name_kana: Kana | None = None
    date_of_birth: BirthDate | None = None

    @model_validator(mode="after")
    def _one_criterion(self) -> SearchRequest:
        given = {name for name in self.model_fields_set if getattr(self, name) is not None}
        if given not in ({"phone"}, {"email"}, {"name_kana", "date_of_birth"}):
            raise ValueError("search by phone, by email, or by name_kana with date_of_birth")
        return self


class SearchMatch(BaseModel):
    id: str
    display_name: str


class SearchResult(BaseModel):
    items: list[SearchMatch]
    next: None = None
