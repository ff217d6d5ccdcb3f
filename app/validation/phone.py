"""Phone numbers: any common Japanese form in, E.164 for storage and the index, national out."""

from __future__ import annotations

import re
import unicodedata

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat

from app.validation import HYPHENS

MAX_INPUT_LENGTH = 32
MESSAGE = "Not a valid Japanese phone number."

# Digits, an optional leading "+", and the punctuation people write between groups; letters
# (vanity numbers, "ext.") are refused rather than interpreted.
_ACCEPTED = re.compile(rf"\+?[0-9 ().{re.escape(HYPHENS)}]+")


def _parse(text: str) -> PhoneNumber:
    try:
        return phonenumbers.parse(text, "JP")
    except NumberParseException:
        raise ValueError(MESSAGE) from None


def normalise_phone(text: str) -> str:
    """E.164 (``+819012345678``) of a valid Japanese number, or ``ValueError``."""
    normal = unicodedata.normalize("NFKC", text).strip()
    if len(normal) > MAX_INPUT_LENGTH or not _ACCEPTED.fullmatch(normal):
        raise ValueError(MESSAGE)
    number = _parse(normal)
    # Only numbers of Japan (+81): the shops and their SMS sender serve Japanese lines, and
    # accepting "+1 …" would also let a foreign number pass for a domestic one without "0".
    if not phonenumbers.is_valid_number(number) or (
        phonenumbers.region_code_for_number(number) != "JP"
    ):
        raise ValueError(MESSAGE)
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))


_JAPAN = "+81"


def format_national(e164: str) -> str:
    """The national form of a stored E.164 number: ``+819012345678`` → ``090-1234-5678``."""
    if not e164.startswith("+"):
        raise ValueError(MESSAGE)
    digits = e164[len(_JAPAN) :]
    if e164.startswith(_JAPAN) and digits.isascii() and digits.isdigit() and digits[:1] != "0":
        # What ``normalise_phone`` stored: the number is read off the digits, without parsing
        # the text again (half the cost of formatting it; every read formats a few).
        number = PhoneNumber(country_code=81, national_number=int(digits))
    else:
        number = _parse(e164)
    return str(phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL))
