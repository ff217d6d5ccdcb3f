"""Rate limits over `limits`: in process memory, or Redis when ``SHOPVAULT_REDIS_URL`` is set."""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.errors import RateLimited


class RateLimits:
    def __init__(self, redis_url: str | None) -> None:
        uri = "async+" + redis_url if redis_url else "async+memory://"
        storage = storage_from_string(uri)
        assert isinstance(storage, Storage)
        self.storage = storage
        self._limiter = MovingWindowRateLimiter(self.storage)

    async def _retry_after(self, item: RateLimitItem, key: str) -> int:
        stats = await self._limiter.get_window_stats(item, key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def ensure_room(self, limit: str, *keys: str) -> None:
        """Raise ``RateLimited`` if any key has used up its limit (without counting a hit)."""
        item = parse(limit)
        for key in keys:
            if not await self._limiter.test(item, key):
                raise RateLimited(await self._retry_after(item, key))

    async def hit(self, limit: str, *keys: str) -> None:
        """Count one hit against every key (limits already reached stay reached)."""
        item = parse(limit)
        for key in keys:
            await self._limiter.hit(item, key)

    async def consume(self, limit: str, key: str) -> None:
        """Count a hit, or raise ``RateLimited`` when none is left."""
        item = parse(limit)
        if not await self._limiter.hit(item, key):
            raise RateLimited(await self._retry_after(item, key))
