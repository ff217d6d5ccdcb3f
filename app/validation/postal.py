"""Japanese postal codes (郵便番号): ``NNN-NNNN``."""

from __future__ import annotations

import re
import unicodedata

from app.validation import HYPHENS

MESSAGE = "A postal code must be written NNN-NNNN."

# An optional 〒 mark, three digits, an optional hyphen, four digits (after NFKC).
_POSTAL = re.compile(rf"(?:〒 ?)?([0-9]{{3}})[{re.escape(HYPHENS)}]?([0-9]{{4}})")


def normalise_postal_code(text: str) -> str:
    """``NNN-NNNN`` from ``NNN-NNNN``, ``NNNNNNN`` or their full-width forms."""
    match = _POSTAL.fullmatch(unicodedata.normalize("NFKC", text).strip())
    if match is None:
        raise ValueError(MESSAGE)
    return f"{match[1]}-{match[2]}"
