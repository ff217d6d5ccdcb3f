"""Rate limits over `limits` (moving windows): in process memory, or Redis when
``SHOPVAULT_REDIS_URL`` is set (keys under ``SHOPVAULT_REDIS_KEY_PREFIX``).

Attempts that must not overshoot under concurrency (logins, the current password) are counted
*before* the work they guard (``reserve``: the counting itself is atomic in the storage) and
given back when the attempt succeeds (``forgive``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, cast

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio import Redis

from app.errors import RateLimited

if TYPE_CHECKING:
    from app.audit.events import EventDraft


class RateLimits:
    def __init__(self, redis_url: str | None, *, key_prefix: str = "shopvault") -> None:
        if redis_url:
            storage = storage_from_string(
                "async+" + redis_url, implementation="redispy", key_prefix=f"{key_prefix}:limits"
            )
        else:
            storage = storage_from_string("async+memory://")
        assert isinstance(storage, Storage)
        self.storage = storage
        self._limiter = MovingWindowRateLimiter(self.storage)

    async def _retry_after(self, item: RateLimitItem, key: str) -> int:
        stats = await self._limiter.get_window_stats(item, key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def consume(
        self,
        limit: str,
        key: str,
        *,
        audit_event: EventDraft | None = None,
        kind: str | None = None,
    ) -> None:
        """Count a hit, or raise ``RateLimited`` (carrying ``audit_event``) when none is left."""
        item = parse(limit)
        if not await self._limiter.hit(item, key):
            retry_after = await self._retry_after(item, key)
            raise RateLimited(retry_after, audit_event=audit_event, kind=kind)

    async def reserve(
        self,
        limit: str,
        *keys: str,
        audit_event: EventDraft | None = None,
        kind: str | None = None,
    ) -> None:
        """Count one attempt against every key, before the attempt is made; if any key has no
        room left, nothing stays counted and ``RateLimited`` is raised."""
        item = parse(limit)
        counted: list[str] = []
        for key in keys:
            if not await self._limiter.hit(item, key):
                retry_after = await self._retry_after(item, key)
                await self._give_back(item, counted)
                raise RateLimited(retry_after, audit_event=audit_event, kind=kind)
            counted.append(key)

    async def forgive(self, limit: str, *keys: str) -> None:
        """Give back one attempt counted by ``reserve`` (it succeeded)."""
        await self._give_back(parse(limit), keys)

    async def _give_back(self, item: RateLimitItem, keys: tuple[str, ...] | list[str]) -> None:
        # `limits` has no "un-hit": a moving window is a list of timestamps, newest first, so
        # giving one back removes the newest (within the same second as the attempt's own).
        for key in keys:
            storage_key = item.key_for(key)
            if isinstance(self.storage, MemoryStorage):
                async with self.storage.locks[storage_key]:
                    entries = self.storage.events.get(storage_key)
                    if entries:
                        del entries[0]
            elif isinstance(self.storage, RedisStorage) and isinstance(
                self.storage.bridge, RedispyBridge
            ):
                bridge = self.storage.bridge
                connection = cast(Redis, bridge.get_connection())
                await connection.lpop(bridge.prefixed_key(storage_key))
            else:  # pragma: no cover - only the two storages above are configured
                raise TypeError(f"cannot give back attempts in {type(self.storage).__name__}")

    async def attempts(self, limit: str, key: str) -> int:
        """How many attempts the window holds now (for tests and operators)."""
        item = parse(limit)
        stats = await self._limiter.get_window_stats(item, key)
        return item.amount - stats.remaining
