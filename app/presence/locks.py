"""Locks on guessable proofs (PIN, SMS code) per customer id asked for — whether or not such a
customer exists, so that a lock says nothing about existence.

Each attempt is counted *before* it is checked (so concurrent guesses cannot overshoot) and
given back when it succeeds. ``PRESENCE_LOCK`` has two windows (default ``5/30minutes;
10/24hours``): reaching the first locks PIN and code proofs for its length; reaching the second
locks them until a document proof or a manager's reason succeeds for that customer. Counters
live in the rate-limit storage: process memory, or Redis (shared by every process) when
``SHOPVAULT_REDIS_URL`` is set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage

# How long the lock "until a document proof" lasts when nothing lifts it (a storage needs one).
HARD_LOCK_SECONDS = 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Locked:
    retry_after: int


class PresenceLocks:
    def __init__(self, storage: Storage, setting: str) -> None:
        timed, hard = parse_many(setting)
        self._storage = storage
        self._windows: tuple[RateLimitItem, RateLimitItem] = (timed, hard)

    @staticmethod
    def _key(kind: str, customer_key: str) -> str:
        return f"presence:{kind}:{customer_key}"

    async def _lock_left(self, customer_key: str) -> int | None:
        for kind in ("hard", "timed"):
            key = self._key(kind, customer_key)
            if await self._storage.get(key) > 0:
                expiry = await self._storage.get_expiry(key)
                return max(1, math.ceil(expiry - time.time()))
        return None

    async def attempt(self, customer_key: str) -> Locked | None:
        """Count an attempt at a guessable proof; ``Locked`` if it may not be checked."""
        left = await self._lock_left(customer_key)
        if left is not None:
            return Locked(left)
        counts = [
            await self._storage.incr(self._key(f"tries{i}", customer_key), window.get_expiry())
            for i, window in enumerate(self._windows)
        ]
        timed, hard = self._windows
        if counts[1] > hard.amount:
            await self._storage.incr(self._key("hard", customer_key), HARD_LOCK_SECONDS)
            return Locked(HARD_LOCK_SECONDS)
        if counts[0] > timed.amount:
            await self._storage.incr(self._key("timed", customer_key), timed.get_expiry())
            return Locked(timed.get_expiry())
        return None

    async def failed(self, customer_key: str) -> Locked | None:
        """The attempt counted by ``attempt`` was a wrong proof: lock once a window is full."""
        timed, hard = self._windows
        if await self._storage.get(self._key("tries1", customer_key)) >= hard.amount:
            await self._storage.incr(self._key("hard", customer_key), HARD_LOCK_SECONDS)
            return Locked(HARD_LOCK_SECONDS)
        if await self._storage.get(self._key("tries0", customer_key)) >= timed.amount:
            await self._storage.incr(self._key("timed", customer_key), timed.get_expiry())
            return Locked(timed.get_expiry())
        return None

    async def succeeded(self, customer_key: str) -> None:
        """The attempt counted by ``attempt`` proved presence: it is given back."""
        for i, window in enumerate(self._windows):
            await self._storage.incr(
                self._key(f"tries{i}", customer_key), window.get_expiry(), amount=-1
            )

    async def lift(self, customer_key: str) -> None:
        """A document proof or a manager's reason succeeded: every lock and count goes."""
        for kind in ("hard", "timed", "tries0", "tries1"):
            await self._storage.clear(self._key(kind, customer_key))
