"""``presence`` in a body: how the customer proves they are at the counter (or on the phone)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from app.kit.schemas import Strict
from app.presence.proofs import normalise_any_kept_number
from app.validation.fields import DocumentNumber, Pin

__all__ = ["CodeProof", "DocumentProof", "Pin", "PinProof", "Presence", "PresenceAgain"]


def _kept_format(number: str) -> str:
    normalise_any_kept_number(number)  # ValueError → 422; never scanned as free text
    return number


class PinProof(Strict):
    """The customer types their 4-digit PIN on the terminal's keypad."""

    method: Literal["pin"]
    pin: Pin


class DocumentProof(Strict):
    """The full number read from the identity document the customer shows."""

    method: Literal["identity_document"]
    number: Annotated[DocumentNumber, AfterValidator(_kept_format)]


class CodeProof(Strict):
    """The 6-digit code sent to the customer's phone by ``POST /customers/{id}/presence-code``."""

    method: Literal["sms_code"]
    code: Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]


Presence = Annotated[PinProof | DocumentProof | CodeProof, Field(discriminator="method")]


class PresenceAgain(Strict):
    """``POST /visits/{id}/presence``: the visit's customer proves presence again (back at the
    counter, e.g. to pick up a repair). A manager may send no proof and X-Access-Reason."""

    presence: Presence | None = None
