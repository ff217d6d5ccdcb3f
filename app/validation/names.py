"""Personal names, written family name first, then given name, separated by a space."""

from __future__ import annotations

import re
import unicodedata

MAX_LENGTH = 100
MESSAGE = "A name must be 1 to 100 characters, without control characters."
MASK = " **"

# Control, format (bidi overrides, zero-width), surrogate, private-use and unassigned code
# points, and line/paragraph separators: none belongs in a name.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# A run of space separators (category Zs: " ", the full-width "　", no-break spaces …).
_SPACES = re.compile("[ \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")


def normalise_name(text: str) -> str:
    """NFC; each run of spaces becomes one ASCII space; trimmed; 1–100 characters."""
    # NFC, not NFKC: the name keeps its own characters (full-width letters, compatibility
    # kanji); only the separator is normalised.
    normal = unicodedata.normalize("NFC", text)
    if any(unicodedata.category(char) in _REFUSED_CATEGORIES for char in normal):
        raise ValueError(MESSAGE)
    normal = _SPACES.sub(" ", normal).strip(" ")
    if not normal or len(normal) > MAX_LENGTH:
        raise ValueError(MESSAGE)
    return normal


def display_name(name: str) -> str:
    """The family name and a mask (``山田 太郎`` → ``山田 **``); no space: first character."""
    normal = _SPACES.sub(" ", name).strip(" ")
    if not normal:
        raise ValueError(MESSAGE)
    family, space, _given = normal.partition(" ")
    if space:
        return family + MASK
    end = 1
    # Keep combining marks with their base character.
    while end < len(normal) and unicodedata.combining(normal[end]):
        end += 1
    return normal[:end] + MASK
