"""Encryption at rest: per-customer data keys wrapped by the master key, and field encryption.

Every personal value is sealed with AES-256-GCM under its customer's data key, with a fresh
96-bit nonce and associated data naming the table, column and row it belongs to, so a
ciphertext copied into another row or column does not decrypt. Data keys are themselves sealed
("wrapped") by the master key, bound to their customer and key scope. A customer's data key is
masked by a shred key kept outside the database before it is wrapped (``app/shred_keys.py``):
destroying the wrapped key and then that shred key makes that customer's data in that scope
unreadable for good, in every copy of the database.

Blob layout (both kinds): one format-version byte, the 12-byte nonce, then ciphertext + tag.
"""

from __future__ import annotations

import functools
import hashlib
import os
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DATA_KEY_BYTES = 32
MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FORMAT_VERSION = 1

_VERSION_PREFIX = bytes([FORMAT_VERSION])
_HEADER_BYTES = 1 + NONCE_BYTES
WRAPPED_KEY_BYTES = _HEADER_BYTES + DATA_KEY_BYTES + TAG_BYTES
_MAX_AAD_PART = 0xFFFF


class DecryptionError(Exception):
    """A blob did not decrypt: wrong key, wrong place (associated data), tampered or malformed."""


class KeyScope(StrEnum):
    # The identity-verification record must be kept longer than the rest of a customer's data,
    # so it has its own data key: erasure destroys PROFILE and keeps IDENTITY until it is due.
    IDENTITY = "identity"
    PROFILE = "profile"


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def _aad_part(part: str) -> bytes:
    # Length-prefixed, so that ("ab", "c") and ("a", "bc") never share associated data.
    raw = part.encode("utf-8")
    if len(raw) > _MAX_AAD_PART:
        raise ValueError("An associated-data part is too long.")
    return len(raw).to_bytes(2, "big") + raw


@functools.cache
def _aad_head(label: bytes, *parts: str) -> bytes:
    """The associated data's fixed start: the label and the names (table, column), never a
    value; each field read only adds its row's id."""
    return _VERSION_PREFIX + label + b"".join(_aad_part(part) for part in parts)


_SCOPE_PARTS = {scope: _aad_part(scope.value) for scope in KeyScope}


def _key_aad(customer_id: str, scope: KeyScope) -> bytes:
    """A data key's associated data: the label, its customer and its scope."""
    return _aad_head(b"key") + _aad_part(customer_id) + _SCOPE_PARTS[scope]


def _seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return _VERSION_PREFIX + nonce + aead.encrypt(nonce, plaintext, aad)


def _open(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < _HEADER_BYTES + TAG_BYTES or blob[:1] != _VERSION_PREFIX:
        raise DecryptionError("The blob is malformed or of an unknown format version.")
    try:
        return aead.decrypt(blob[1:_HEADER_BYTES], blob[_HEADER_BYTES:], aad)
    except InvalidTag:
        raise DecryptionError("The blob does not decrypt with this key and context.") from None


_BLOCK = 64  # SHA-256's block size
_INNER_PAD = bytes(b ^ 0x36 for b in range(256))
_OUTER_PAD = bytes(b ^ 0x5C for b in range(256))


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, with the key's padded blocks hashed once.

    The same digest as ``hmac.digest(key, message, "sha256")`` (the tests compare them) at half
    the cost or less: OpenSSL 3's one-shot HMAC fetches and initialises its MAC on every call,
    which costs more than hashing a short message. For what runs once per event or per key in
    bulk: verification seals every event again, a purge re-masks every key of a bucket.

    It holds the key's padded blocks' hash state, which opens as much as the key: drop it with
    the key."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(block.translate(_INNER_PAD))
        self._outer = hashlib.sha256(block.translate(_OUTER_PAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class MasterKey:
    """Wraps and unwraps data keys. Holds the key only inside its AESGCM instance."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_BYTES:
            raise ValueError(f"The master key must be exactly {MASTER_KEY_BYTES} bytes.")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"

    def wrap(self, data_key: bytes, *, customer_id: str, scope: KeyScope) -> bytes:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"A data key must be exactly {DATA_KEY_BYTES} bytes.")
        return _seal(self._aead, data_key, _key_aad(customer_id, scope))

    def unwrap(self, wrapped: bytes, *, customer_id: str, scope: KeyScope) -> bytes:
        if len(wrapped) != WRAPPED_KEY_BYTES:
            raise DecryptionError("The wrapped key is malformed.")
        return _open(self._aead, wrapped, _key_aad(customer_id, scope))

    def remask(self, wrapped: bytes, mask: bytes, *, customer_id: str, scope: KeyScope) -> bytes:
        """A data key this key wrapped, opened, XORed with ``mask`` and wrapped again under
        one associated data (a purge re-masks millions of keys, ``app/shredding.py``)."""
        if len(wrapped) != WRAPPED_KEY_BYTES:
            raise DecryptionError("The wrapped key is malformed.")
        aad = _key_aad(customer_id, scope)
        opened = _open(self._aead, wrapped, aad)
        return _seal(self._aead, xor(opened, mask), aad)


def xor(left: bytes, right: bytes) -> bytes:
    if len(left) != len(right):
        raise ValueError("A mask is as long as the key it masks.")
    return (int.from_bytes(left) ^ int.from_bytes(right)).to_bytes(len(left))


class FieldCipher:
    """Encrypts and decrypts one customer's fields under one data key."""

    __slots__ = ("_aead",)

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"A data key must be exactly {DATA_KEY_BYTES} bytes.")
        self._aead = AESGCM(data_key)

    def __repr__(self) -> str:
        return "FieldCipher(<redacted>)"

    def encrypt(self, plaintext: str, *, table: str, column: str, row_id: str) -> bytes:
        aad = _aad_head(b"field", table, column) + _aad_part(row_id)
        return _seal(self._aead, plaintext.encode("utf-8"), aad)

    def decrypt(self, blob: bytes, *, table: str, column: str, row_id: str) -> str:
        raw = _open(self._aead, blob, _aad_head(b"field", table, column) + _aad_part(row_id))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # Authentic but not text: only possible if something else was sealed here.
            raise DecryptionError("The decrypted value is not text.") from None
