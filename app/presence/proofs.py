"""The customer's proofs of presence as the service keeps them: a PIN and the identity document's
number, each only as a keyed hash (its own subkey of the index key, a per-customer salt),
compared in constant time. Neither is ever returned, logged or put in an event.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import date
from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.validation.documents import NUMBERLESS, DocumentType, normalise_document_number

SALT_BYTES = 16


class PresenceMethod(StrEnum):
    """How a customer's presence was established, as the attach event records it."""

    PIN = "pin"
    IDENTITY_DOCUMENT = "identity_document"
    SMS_CODE = "sms_code"
    MANAGER_REASON = "manager_reason"
    REGISTERED = "registered"  # registered within the visit: present by definition


# Proofs that a stranger can guess: locked after repeated failures (a document or a manager's
# reason never is, so a customer at the counter is never locked out by someone else's guesses).
GUESSABLE = frozenset({PresenceMethod.PIN, PresenceMethod.SMS_CODE})


def _subkey(index_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(index_key)


class ProofKeys:
    """The two subkeys, derived once per process."""

    def __init__(self, index_key: bytes) -> None:
        self._pin = _subkey(index_key, b"shopvault/presence-pin/v1")
        self._document = _subkey(index_key, b"shopvault/presence-document/v1")

    def __repr__(self) -> str:
        return "ProofKeys(<hidden>)"

    def pin_hash(self, salt: bytes, customer_id: str, pin: str) -> str:
        message = salt + b"\n" + customer_id.encode() + b"\n" + pin.encode()
        return hmac.new(self._pin, message, hashlib.sha256).hexdigest()

    def document_hash(self, salt: bytes, customer_id: str, number: str) -> str:
        message = salt + b"\n" + customer_id.encode() + b"\n" + number.encode()
        return hmac.new(self._document, message, hashlib.sha256).hexdigest()


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def matches(expected: str | None, actual: str) -> bool:
    """Constant time; a customer without a kept value never matches."""
    if expected is None:
        hmac.compare_digest(actual, actual)  # the same work either way
        return False
    return hmac.compare_digest(expected, actual)


def weak_pin_reason(pin: str, *, date_of_birth: date, phone_e164: str) -> str | None:
    """Why a PIN is refused, or None. Fixed sentences: never the PIN itself."""
    if len(set(pin)) == 1:
        return "A PIN may not repeat one digit."
    if pin in {"1234", "4321"}:
        return "A PIN may not be a straight run of digits."
    if pin == date_of_birth.strftime("%m%d"):
        return "A PIN may not be the birth date's month and day."
    if pin == f"{date_of_birth.year:04d}":
        return "A PIN may not be the birth year."
    if pin == phone_e164[-4:]:
        return "A PIN may not be the last 4 digits of the phone number."
    return None


KEPT_NUMBER_TYPES = tuple(t for t in DocumentType if t not in NUMBERLESS)
NUMBER_FORMATS_REFUSED = "The number matches none of the kept document formats."


def normalise_any_kept_number(number: str) -> str:
    """The typed number in its kept form, if it has the format of any document type whose
    number is kept (``ValueError`` otherwise). Which type it is does not matter: a number of
    another type simply does not match."""
    for doc_type in KEPT_NUMBER_TYPES:
        try:
            normalised = normalise_document_number(doc_type, number)
        except ValueError:
            continue
        if normalised is not None:
            return normalised
    raise ValueError(NUMBER_FORMATS_REFUSED)
