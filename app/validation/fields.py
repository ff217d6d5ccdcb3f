"""Annotated field types for request bodies: each normalises its value or refuses it with a
fixed message (never the value)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from app.validation.kana import normalise_kana
from app.validation.mynumber import reject_individual_number
from app.validation.names import normalise_name
from app.validation.patterns import DOCUMENT_NUMBER, KANA, PHONE, PIN, POSTAL_CODE, TEXT
from app.validation.phone import normalise_phone
from app.validation.postal import normalise_postal_code


def _past_date(value: date) -> date:
    if value > date.today() or value.year < 1900:
        raise ValueError("the date must be between 1900 and today")
    return value


PersonName = Annotated[
    str,
    StringConstraints(max_length=100),
    AfterValidator(normalise_name),
    AfterValidator(reject_individual_number),
]
Kana = Annotated[
    str, StringConstraints(max_length=100, pattern=KANA), AfterValidator(normalise_kana)
]
Phone = Annotated[
    str, StringConstraints(max_length=32, pattern=PHONE), AfterValidator(normalise_phone)
]
PostalCode = Annotated[
    str,
    StringConstraints(max_length=16, pattern=POSTAL_CODE),
    AfterValidator(normalise_postal_code),
]
# A kept identity-document number in any of its written forms; its type decides which form.
DocumentNumber = Annotated[str, StringConstraints(max_length=32, pattern=DOCUMENT_NUMBER)]
Pin = Annotated[str, StringConstraints(pattern=PIN)]
BirthDate = Annotated[date, AfterValidator(_past_date)]
Address = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=TEXT),
    AfterValidator(reject_individual_number),
]
Notes = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=2000, pattern=TEXT),
    AfterValidator(reject_individual_number),
]
ShortText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=TEXT),
    AfterValidator(reject_individual_number),
]
Digits4 = Annotated[str, Field(pattern=r"^[0-9]{4}$")]
