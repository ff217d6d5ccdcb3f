"""The hash chain: how an event is encoded and sealed.

Events are spread over several chains (each process appends to chains of its own, see
``app/audit/repository.py``); each chain is a strict sequence whose head (last ``seq`` and
``hash``) lives in ``audit_chain``. An event's hash is HMAC-SHA256, under a key derived from the
index key, of the previous hash and the event's canonical encoding (``ENCODING_VERSION``): a
changed, deleted or reordered event breaks the chain, and without the key nobody can rebuild it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.crypto import HmacSha256

ENCODING_VERSION = 2
GENESIS_HASH = "0" * 64

_HASHED_FIELDS_V1 = (
    "id",
    "chain",
    "seq",
    "at",
    "actor",
    "actor_id",
    "role",
    "store",
    "terminal",
    "purpose",
    "reason",
    "action",
    "resource",
    "customer_ids",
    "fields",
    "changed_fields",
    "result_count",
    "outcome",
    "denial",
    "review_required",
    "request_id",
    "encoding_version",
)
# Version 2 adds the presence method, the customer request and the rate-limit count.
_HASHED_FIELDS_V2 = (*_HASHED_FIELDS_V1, "presence_method", "subject_request_id", "count")
HASHED_FIELDS_BY_VERSION: dict[int, tuple[str, ...]] = {1: _HASHED_FIELDS_V1, 2: _HASHED_FIELDS_V2}
HASHED_FIELDS = HASHED_FIELDS_BY_VERSION[ENCODING_VERSION]


def _derive(index_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(index_key)


def derive_chain_key(index_key: bytes) -> bytes:
    return _derive(index_key, b"shopvault/audit-chain/v1")


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """The access log's keys, all derived from the index key (which ``keys rotate`` keeps)."""

    chain: bytes  # seals events
    head: bytes  # authenticates chain heads
    registry: bytes  # authenticates chain registrations
    checkpoint: bytes  # signs checkpoints

    @classmethod
    def derive(cls, index_key: bytes) -> AuditKeys:
        return cls(
            chain=derive_chain_key(index_key),
            head=_derive(index_key, b"shopvault/audit-head/v1"),
            registry=_derive(index_key, b"shopvault/audit-registry/v1"),
            checkpoint=_derive(index_key, b"shopvault/audit-checkpoint/v1"),
        )

    def head_mac(self, chain: str, seq: int, head_hash: str) -> str:
        message = f"head\n{chain}\n{seq}\n{head_hash}".encode()
        return hmac.new(self.head, message, hashlib.sha256).hexdigest()

    def registry_mac(self, chain: str, registered_at: datetime) -> str:
        message = f"registry\n{chain}\n{_encode_value(registered_at)}".encode()
        return hmac.new(self.registry, message, hashlib.sha256).hexdigest()

    def checkpoint_signature(self, checkpoint_hash: str) -> str:
        message = f"checkpoint\n{checkpoint_hash}".encode()
        return hmac.new(self.checkpoint, message, hashlib.sha256).hexdigest()


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, tuple):
        return list(value)
    return value


# Built once: ``json.dumps`` with options builds a new encoder on every call.
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_encoding(event: dict[str, Any]) -> bytes:
    fields = HASHED_FIELDS_BY_VERSION[event["encoding_version"]]
    payload = {name: _encode_value(event[name]) for name in fields}
    return CANONICAL_JSON.encode(payload).encode()


def seal(key: bytes, prev_hash: str, event: dict[str, Any]) -> str:
    return seal_encoded(key, prev_hash, canonical_encoding(event))


def seal_encoded(key: bytes, prev_hash: str, encoded: bytes) -> str:
    return sealer(key).digest(prev_hash.encode() + b"\n" + encoded).hex()


@lru_cache(maxsize=8)
def sealer(key: bytes) -> HmacSha256:
    return HmacSha256(key)
