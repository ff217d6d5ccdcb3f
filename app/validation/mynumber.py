"""The Individual Number (個人番号, My Number): recognise it so that it is never stored.

The shop may not collect it, so any free-text field holding one is refused.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from operator import mul

from app.validation import HYPHENS

INDIVIDUAL_NUMBER_DIGITS = 12
MESSAGE = "The text may not contain an Individual Number (My Number)."

_TWELVE_DIGITS = re.compile(r"[0-9]{12}")
# Digit groups joined by one space, or by one hyphen with at most one space either side.
_SEPARATOR = rf"(?: ?[{re.escape(HYPHENS)}] ?| )"
_RUN = re.compile(rf"[0-9]+(?:{_SEPARATOR}[0-9]+)*")
_GROUP = re.compile(r"[0-9]+")
# Qn for n = 11 … 1, so that the weights line up with the digits as written.
_WEIGHTS_LEFT_TO_RIGHT = tuple(n + 1 if n <= 6 else n - 5 for n in range(11, 0, -1))


def _check_digit(first_eleven: str) -> int:
    # 個人番号の検査用数字: Pn is the n-th digit counting leftwards from the last non-check digit,
    # Qn = n + 1 for n <= 6 and n - 5 above; check = 0 when the remainder is 0 or 1.
    total = sum(map(mul, map(int, first_eleven), _WEIGHTS_LEFT_TO_RIGHT))
    remainder = total % 11
    return 0 if remainder <= 1 else 11 - remainder


def is_individual_number(digits: str) -> bool:
    """Exactly 12 ASCII digits whose last digit is the check digit of the first 11."""
    if not _TWELVE_DIGITS.fullmatch(digits):
        return False
    return _check_digit(digits[:-1]) == int(digits[-1])


def _candidates(groups: list[str]) -> Iterator[str]:
    # Whole groups only, never a slice of one: a 13+ digit group (IMEI, card or account number)
    # is another identifier, and sliding a 12-digit window over it would refuse about one long
    # number in eleven; but whole groups next to a 12-digit number ("1-2-3 1234 5678 9018" in an
    # address) must not hide it, so every run of consecutive groups totalling 12 digits counts.
    end = width = 0
    for start, group in enumerate(groups):
        while end < len(groups) and width < INDIVIDUAL_NUMBER_DIGITS:
            width += len(groups[end])
            end += 1
        if width == INDIVIDUAL_NUMBER_DIGITS:
            yield "".join(groups[start:end])
        width -= len(group)


def contains_individual_number(text: str) -> bool:
    """Whether the text (after NFKC) holds a valid Individual Number, grouped or not."""
    normal = unicodedata.normalize("NFKC", text)
    for run in _RUN.finditer(normal):
        if any(is_individual_number(c) for c in _candidates(_GROUP.findall(run.group()))):
            return True
    return False


def reject_individual_number(text: str) -> str:
    """The text unchanged, or ``ValueError`` when it holds an Individual Number."""
    if contains_individual_number(text):
        raise ValueError(MESSAGE)
    return text
