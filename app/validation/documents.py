"""Identity documents shown at the counter and the numbers the shop may keep of them."""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum

from app.validation import HYPHENS


class DocumentType(StrEnum):
    DRIVERS_LICENSE = "drivers_license"
    MY_NUMBER_CARD = "my_number_card"
    PASSPORT = "passport"
    RESIDENCE_CARD = "residence_card"
    HEALTH_INSURANCE_CARD = "health_insurance_card"


# No number is kept for these: the Individual Number may not be stored (番号法), and the
# insured person's symbols and numbers may not be collected (健康保険法).
NUMBERLESS = frozenset({DocumentType.MY_NUMBER_CARD, DocumentType.HEALTH_INSURANCE_CARD})

_FORMATS: dict[DocumentType, tuple[re.Pattern[str], str]] = {
    # A licence number is 12 digits like an Individual Number, and about one in ten passes
    # its check digit: it is never scanned for one.
    DocumentType.DRIVERS_LICENSE: (
        re.compile(r"[0-9]{12}"),
        "A driver's licence number must be 12 digits.",
    ),
    DocumentType.PASSPORT: (
        re.compile(r"[A-Z]{2}[0-9]{7}"),
        "A passport number must be 2 letters and 7 digits.",
    ),
    DocumentType.RESIDENCE_CARD: (
        re.compile(r"[A-Z]{2}[0-9]{8}[A-Z]{2}"),
        "A residence card number must be 2 letters, 8 digits and 2 letters.",
    ),
}
NUMBER_REFUSED = "The shop may not keep a number for this document type."
NUMBER_REQUIRED = "A document number is required for this document type."
LAST4_REFUSED = "The number is too short to show its last 4 characters."

_SEPARATORS = re.compile(rf"[ {re.escape(HYPHENS)}]")


def normalise_document_number(doc_type: DocumentType, number: str | None) -> str | None:
    """The number to keep: NFKC, spaces and hyphens removed, upper case; ``None`` if none."""
    compact = None if number is None else _SEPARATORS.sub("", unicodedata.normalize("NFKC", number))
    if doc_type in NUMBERLESS:
        if compact:
            raise ValueError(NUMBER_REFUSED)
        return None
    if not compact:
        raise ValueError(NUMBER_REQUIRED)
    pattern, message = _FORMATS[doc_type]
    # ASCII only before upper-casing: "ı".upper() is "I", which must not slip through.
    if not compact.isascii() or not pattern.fullmatch(compact.upper()):
        raise ValueError(message)
    return compact.upper()


def last4(number: str) -> str:
    """The last 4 characters, all staff are shown of a kept number."""
    # A number of 4 characters or fewer would be shown whole.
    if len(number) <= 4:
        raise ValueError(LAST4_REFUSED)
    return number[-4:]
