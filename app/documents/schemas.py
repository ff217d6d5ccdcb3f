from __future__ import annotations

import unicodedata
from datetime import date, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, StringConstraints

from app.documents.rules import DisposalMethod, FormStatus, FormType
from app.kit.schemas import Strict
from app.validation.mynumber import reject_individual_number

REASON_MIN, REASON_MAX = 10, 500


def _reason(text: str) -> str:
    text = unicodedata.normalize("NFC", text).strip()
    if any(unicodedata.category(ch) in {"Cc", "Cf"} for ch in text):
        raise ValueError("control characters are not allowed")
    if not REASON_MIN <= len(text) <= REASON_MAX:
        raise ValueError(f"a reason is {REASON_MIN} to {REASON_MAX} characters long")
    return reject_individual_number(text)


def _printable(text: str) -> str:
    if any(unicodedata.category(ch) in {"Cc", "Cf"} for ch in text):
        raise ValueError("control characters are not allowed")
    return text


StorageLocation = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_printable),
    AfterValidator(reject_individual_number),
]
DisposalReason = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_reason)]


class FormCreate(Strict):
    form_type: FormType
    storage_location: StorageLocation  # where the paper is, e.g. "cabinet-2"


class FormDispose(Strict):
    method: DisposalMethod
    # Required to dispose of a form still in retention; recorded in the access event.
    reason: DisposalReason | None = None


class FormView(BaseModel):
    """A paper form in the register: no personal data beyond the customer's id."""

    id: str
    store: str
    visit_id: str
    customer_id: str
    form_type: FormType
    storage_location: str
    status: FormStatus
    registered_at: datetime
    registered_by: str | None
    retain_until: date | None  # null: kept while its basis lasts (see the retention rules)
    retention_rule: str
    disposed_at: datetime | None
    disposed_by: str | None
    disposal_method: DisposalMethod | None


class FormList(BaseModel):
    items: list[FormView]
    next: str | None
