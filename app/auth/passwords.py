"""Password and client-secret hashing."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.concurrency import run_in_threadpool

_hasher = PasswordHasher()
# Verified against when the login does not exist, so that both answers take as long.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MIN_PASSWORD_LENGTH = 12
# A password an admin sets must be replaced at the first login, and ends after this long.
TEMPORARY_PASSWORD_LIFETIME = timedelta(hours=72)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Argon2 is deliberately slow: run it off the event loop."""
    return await run_in_threadpool(_verify, password_hash, password)


async def hash_password_async(password: str) -> str:
    return await run_in_threadpool(hash_password, password)


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_client_secret(secret: str) -> str:
    # Client secrets are 256 random bits: a fast hash is enough, and keeps logins cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_client_secret(secret_hash: str | None, secret: str) -> bool:
    candidate = hash_client_secret(secret)
    return hmac.compare_digest(secret_hash or "0" * 64, candidate) and secret_hash is not None
