"""Password and client-secret hashing.

Argon2 is slow and memory-hard by design (here about 170 ms of CPU and 64 MiB per password,
computed by four threads), so a burst of logins could starve everything else of CPU. It runs
in a small pool of its own (``ARGON2_THREADS`` at a time, the rest wait their turn), whose
threads run at a lower scheduling priority on Linux (the lanes Argon2 starts inherit it): the
event loop serving the shop's reads comes first, password checks take the CPU that is left.
Under a flood of logins from many addresses, logins queue (a few per second per process on two
cores) while the reads go on; ``bench/login_burst.py`` measures it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

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


# One hash computes its four lanes in parallel: a quarter of the cores' worth of hashes at once.
ARGON2_THREADS = max(1, (os.cpu_count() or 1) // 4)
ARGON2_NICENESS = 10


def _lower_priority() -> None:
    # Linux keeps a niceness per thread (and threads started later inherit it); elsewhere the
    # call would lower the whole process, so it is left alone.
    if sys.platform == "linux":
        thread = threading.get_native_id()
        niceness = min(19, os.getpriority(os.PRIO_PROCESS, thread) + ARGON2_NICENESS)
        os.setpriority(os.PRIO_PROCESS, thread, niceness)


_argon2_pool = ThreadPoolExecutor(
    max_workers=ARGON2_THREADS, thread_name_prefix="argon2", initializer=_lower_priority
)

Result = TypeVar("Result")


async def _in_argon2_pool(work: Callable[..., Result], *args: str | None) -> Result:
    return await asyncio.get_running_loop().run_in_executor(_argon2_pool, work, *args)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Argon2 is deliberately slow: run it off the event loop, in the Argon2 pool."""
    return await _in_argon2_pool(_verify, password_hash, password)


async def hash_password_async(password: str) -> str:
    return await _in_argon2_pool(hash_password, password)


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_client_secret(secret: str) -> str:
    # Client secrets are 256 random bits: a fast hash is enough, and keeps logins cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_client_secret(secret_hash: str | None, secret: str) -> bool:
    candidate = hash_client_secret(secret)
    return hmac.compare_digest(secret_hash or "0" * 64, candidate) and secret_hash is not None
