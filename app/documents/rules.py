"""What a paper form is: its types, how it is disposed of, and the states the register shows."""

from __future__ import annotations

from enum import StrEnum


class FormType(StrEnum):
    APPLICATION = "application"
    IDENTITY_COPY = "identity_copy"
    REPAIR_ORDER = "repair_order"
    CONSENT_FORM = "consent_form"
    OTHER = "other"


class DisposalMethod(StrEnum):
    SHREDDED = "shredded"
    DISSOLVED = "dissolved"


class FormStatus(StrEnum):
    KEPT = "kept"  # in retention (or kept while its basis lasts)
    DUE = "due"  # retention ended, not disposed yet
    DISPOSED = "disposed"


# The printable register's wording (the shop floor reads Japanese).
FORM_TYPE_LABELS: dict[FormType, str] = {
    FormType.APPLICATION: "申込書",
    FormType.IDENTITY_COPY: "本人確認書類の写し",
    FormType.REPAIR_ORDER: "修理受付票",
    FormType.CONSENT_FORM: "同意書",
    FormType.OTHER: "その他",
}
