"""Names in katakana (フリガナ): full-width katakana and single spaces."""

from __future__ import annotations

import re
import unicodedata

MAX_LENGTH = 100
MESSAGE = "Must be 1 to 100 katakana characters, optionally separated by spaces."

# The Katakana block U+30A0–U+30FF (with ー and ・). NFKC has already turned half-width
# katakana into these and the full-width space into " ".
_KANA = re.compile(r"[\u30a0-\u30ff]+(?: [\u30a0-\u30ff]+)*")
_SPACES = re.compile(r" +")


def normalise_kana(text: str) -> str:
    """NFKC, runs of spaces collapsed to one, trimmed; anything but katakana is refused."""
    normal = _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip(" ")
    if len(normal) > MAX_LENGTH or not _KANA.fullmatch(normal):
        raise ValueError(MESSAGE)
    return normal


def kana_index_form(normalised: str) -> str:
    """The searchable form: spaces removed, so ``ヤマダ タロウ`` and ``ヤマダタロウ`` match."""
    return normalised.replace(" ", "")
