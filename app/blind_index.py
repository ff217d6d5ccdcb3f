"""Blind indexes: keyed hashes that make exact-match search work without decrypting.

Each indexed field has its own HMAC-SHA256 subkey, derived once (at construction) from the
index key with HKDF-SHA256, so equal values in different fields never share a digest and a
leaked digest of one field says nothing about another. Digests carry the key version
(``v1:…``) so that a new index key can be rolled out beside the old one.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import date
from enum import StrEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INDEX_KEY_MIN_BYTES = 32
SUBKEY_BYTES = 32


class IndexedField(StrEnum):
    PHONE = "phone"
    EMAIL = "email"
    KANA_BIRTH = "kana_birth"


def derive_subkey(index_key: bytes, *, version: int, field: IndexedField) -> bytes:
    info = f"shopvault/blind-index/v{version}/{field.value}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=SUBKEY_BYTES, salt=None, info=info).derive(
        index_key
    )


class BlindIndex:
    """Computes the digests stored beside encrypted fields and looked up by search."""

    __slots__ = ("_prefix", "_seeds", "version")

    version: int
    _prefix: str
    _seeds: dict[IndexedField, hmac.HMAC]

    def __init__(self, index_key: bytes, *, version: int = 1) -> None:
        if len(index_key) < INDEX_KEY_MIN_BYTES:
            raise ValueError(f"The index key must be at least {INDEX_KEY_MIN_BYTES} bytes.")
        if version < 1:
            raise ValueError("The index key version must be a positive integer.")
        self.version = version
        self._prefix = f"v{version}:"
        # One keyed HMAC per field, copied per digest: no key derivation or padding per call.
        self._seeds = {
            field: hmac.new(
                derive_subkey(index_key, version=version, field=field), digestmod=hashlib.sha256
            )
            for field in IndexedField
        }

    def __repr__(self) -> str:
        return f"BlindIndex(version={self.version})"

    def digest(self, field: IndexedField, normalised: str) -> str:
        mac = self._seeds[field].copy()
        mac.update(normalised.encode("utf-8"))
        return self._prefix + mac.hexdigest()


def kana_birth_term(kana_index: str, date_of_birth: date) -> str:
    """The value indexed under ``KANA_BIRTH``: the kana index form and the ISO birth date."""
    # A newline occurs in neither part, so the pair is unambiguous.
    return f"{kana_index}\n{date_of_birth.isoformat()}"
