"""The grammars of personal input, as the ``pattern`` of each field in the OpenAPI document.

Each pattern is enforced (a value that does not match is a ``422`` before any normaliser runs)
and describes exactly the forms people write: a client — or a fuzzer — that follows the
document sends values the service accepts. The normalisers then check what a pattern cannot
(libphonenumber's rules, the length after NFKC, a document number's type).

Patterns are written with literal characters and no escapes inside classes, so that the three
regex dialects that read them agree: Rust's (pydantic), ECMA-262 (JSON Schema validators) and
Python's (hypothesis, generating values).
"""

from __future__ import annotations

from app.validation import HYPHENS


def _class(characters: str) -> str:
    """A character class of literal characters; ``-`` last, where it needs no escape."""
    hyphen = "-" if "-" in characters else ""
    return "[" + characters.replace("-", "") + hyphen + "]"


# Full-width forms are accepted wherever half-width ones are (NFKC maps them).
_DIGIT = "[0-9０-９]"
_SPACE = "[ 　]"
# Between digit groups: spaces, dashes (with their full-width and half-width forms), dots and
# parentheses, at most two in a row ("(090) 1234-5678").
_PHONE_SEPARATOR = _class(" 　.．()（）" + HYPHENS + "－ｰ") + "{0,2}"

# A Japanese number, national (leading 0) or international (+81, optionally "(0)"): 020, 050,
# 060, 070, 080 (0800 too) and 090 numbers have 11 digits with the 0, the others (fixed lines,
# 0120 …) 10.
PHONE = (
    rf"^{_SPACE}*[(（]?"
    rf"(?:[+＋][8８][1１]{_PHONE_SEPARATOR}(?:[(（][0０][)）]{_PHONE_SEPARATOR})?|[0０])"
    rf"{_PHONE_SEPARATOR}"
    rf"(?:[256789２５６７８９][0０](?:{_PHONE_SEPARATOR}{_DIGIT}){{8}}"
    rf"|[1-9１-９](?:{_PHONE_SEPARATOR}{_DIGIT}){{8}})"
    rf"{_SPACE}*$"
)

# Katakana (U+30A0–U+30FF) or half-width katakana (converted by NFKC; a half-width voicing mark
# only after a letter it composes with), words separated by spaces.
_KANA_WORD = "(?:[゠-ヿ]|[ｶ-ﾄﾊ-ﾎｳ]ﾞ|[ﾊ-ﾎ]ﾟ|[ｦ-ﾝ])+"
KANA = rf"^{_SPACE}*{_KANA_WORD}(?:{_SPACE}+{_KANA_WORD})*{_SPACE}*$"

# NNN-NNNN, the hyphen optional, an optional 〒 mark.
POSTAL_CODE = rf"^{_SPACE}*(?:〒 ?)?{_DIGIT}{{3}}{_class(HYPHENS + '－ｰ')}?{_DIGIT}{{4}}{_SPACE}*$"

# The kept identity-document numbers: a driver's licence (12 digits), a passport (2 letters,
# 7 digits), a residence card (2 letters, 8 digits, 2 letters); spaces or dashes may separate
# any two characters. Which type a number must have is checked with the document's type.
_LETTER = "[A-Za-zＡ-Ｚａ-ｚ]"
_NUMBER_SEPARATOR = _class(" 　" + HYPHENS + "－ｰ")


_D = f"{_NUMBER_SEPARATOR}?{_DIGIT}"
_L = f"{_NUMBER_SEPARATOR}?{_LETTER}"
DOCUMENT_NUMBER = (
    rf"^(?:{_DIGIT}(?:{_D}){{11}}"
    rf"|{_LETTER}{_L}(?:{_D}){{7}}"
    rf"|{_LETTER}{_L}(?:{_D}){{8}}(?:{_L}){{2}})$"
)

# Free text (addresses, notes, plans): no control characters but tab and line feed. (Two-digit
# hex escapes are the one escape all three dialects read alike.)
TEXT = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"

# A single line (names of stores and staff): no control characters at all, C1 included.
LINE = r"^[^\x00-\x1f\x7f-\x9f]*$"

# The customer's 4-digit PIN, typed on the terminal's keypad.
PIN = r"^[0-9]{4}$"
