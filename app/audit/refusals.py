"""Rate-limit refusals, summarised: the one exception to "every denied attempt is its own event".

A flood of refused requests must not become a flood of writes. So for each caller (their id, or
the client's address when they have none) and kind of limit, the first ``429`` of a window is
recorded at once, as usual; the refusals that follow within the window are only counted. Once the
window has passed, the next unit of work that appends events anywhere (any process) adds one
``denied`` event standing for them, with ``count``. The window is the wait the first refusal
announced (``Retry-After``), and at least ``MIN_WINDOW_SECONDS``.

The windows live in process memory, or in Redis when ``SHOPVAULT_REDIS_URL`` is set (shared by
every process, so a caller refused by several processes still gets one summary per window).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.audit.events import Action, Actor, EventDraft, Outcome
from app.errors import RateLimited

log = logging.getLogger("shopvault.audit.refusals")

MIN_WINDOW_SECONDS = 60
# Due summaries are looked for at most this often per process (each look is a Redis round trip).
DUE_CHECK_SECONDS = 1.0
# A window nobody appended after for this long is forgotten (Redis keys expire).
FORGET_SECONDS = 7 * 24 * 3600

_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

Clock = Callable[[], float]


def kind_of(refusal: RateLimited, draft: EventDraft) -> str:
    """What was limited: the refusal's own ``kind``, else the event's action and resource with
    ids left out (so refusals about different customers are one kind)."""
    return refusal.kind or f"{draft.action.value}:{_ID.sub('*', draft.resource)}"


def caller_of(draft: EventDraft, client_address: Callable[[], str]) -> str:
    if draft.actor.id is not None:
        return f"id:{draft.actor.id}"
    return f"addr:{client_address()}"


# --- drafts in storage --------------------------------------------------------------------------


def encode_draft(draft: EventDraft) -> str:
    return json.dumps(dataclasses.asdict(draft), separators=(",", ":"), ensure_ascii=False)


def decode_draft(text: str) -> EventDraft:
    values: dict[str, Any] = json.loads(text)
    values["actor"] = Actor(**values["actor"])
    values["action"] = Action(values["action"])
    values["outcome"] = Outcome(values["outcome"])
    for name in ("customer_ids", "fields"):
        values[name] = tuple(values[name])
    if values["changed_fields"] is not None:
        values["changed_fields"] = tuple(values["changed_fields"])
    return EventDraft(**values)


# --- where windows are kept ---------------------------------------------------------------------


class WindowStore(Protocol):
    async def open_or_count(self, key: str, draft: EventDraft, now: float, ends_at: float) -> bool:
        """Open a window for ``key`` (True), or count one more refusal in its open one (False).
        A window that has passed with refusals counted becomes due when another opens."""

    async def take_due(self, now: float) -> list[EventDraft]:
        """The summaries of passed windows (each handed to exactly one caller)."""

    async def put_back(self, summaries: Sequence[EventDraft]) -> None:
        """Summaries taken but not written (their transaction failed): due again."""

    async def close(self) -> None: ...


@dataclass
class _Window:
    ends_at: float
    draft: EventDraft
    count: int = 0


class MemoryWindows:
    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._due: list[EventDraft] = []

    async def open_or_count(self, key: str, draft: EventDraft, now: float, ends_at: float) -> bool:
        window = self._windows.get(key)
        if window is not None and window.ends_at > now:
            window.count += 1
            return False
        if window is not None and window.count:
            self._due.append(dataclasses.replace(window.draft, count=window.count))
        self._windows[key] = _Window(ends_at=ends_at, draft=draft)
        return True

    async def take_due(self, now: float) -> list[EventDraft]:
        due, self._due = self._due, []
        for key, window in list(self._windows.items()):
            if window.ends_at <= now:
                del self._windows[key]
                if window.count:
                    due.append(dataclasses.replace(window.draft, count=window.count))
        return due

    async def put_back(self, summaries: Sequence[EventDraft]) -> None:
        self._due.extend(summaries)

    async def close(self) -> None:
        return None


# KEYS: the window's hash, the schedule (sorted set: window key -> end), the carried-over list.
_OPEN_OR_COUNT = """
local ends_at = redis.call('HGET', KEYS[1], 'ends_at')
if ends_at and tonumber(ends_at) > tonumber(ARGV[1]) then
    redis.call('HINCRBY', KEYS[1], 'count', 1)
    return 0
end
if ends_at then
    local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
    if count > 0 then
        redis.call('RPUSH', KEYS[3], cjson.encode({redis.call('HGET', KEYS[1], 'draft'), count}))
    end
end
redis.call('HSET', KEYS[1], 'ends_at', ARGV[2], 'draft', ARGV[3], 'count', 0)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
"""

# KEYS: the schedule, the carried-over list. ARGV: now, the prefix of window hashes.
_TAKE_DUE = """
local taken = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, member in ipairs(members) do
    redis.call('ZREM', KEYS[1], member)
    local window = ARGV[2] .. member
    local ends_at = redis.call('HGET', window, 'ends_at')
    if ends_at and tonumber(ends_at) <= tonumber(ARGV[1]) then
        local count = tonumber(redis.call('HGET', window, 'count') or '0')
        if count > 0 then
            table.insert(taken, cjson.encode({redis.call('HGET', window, 'draft'), count}))
        end
        redis.call('DEL', window)
    end
end
return taken
"""


class RedisWindows:
    """The windows in Redis, each step one atomic script; all keys share one hash slot."""

    def __init__(self, url: str, prefix: str) -> None:
        self._redis = Redis.from_url(url)
        base = f"{prefix}:{{refusals}}"
        self._window_prefix = f"{base}:w:"
        self._schedule = f"{base}:schedule"
        self._carried = f"{base}:carried"
        self._open_or_count = self._redis.register_script(_OPEN_OR_COUNT)
        self._take_due = self._redis.register_script(_TAKE_DUE)

    async def open_or_count(self, key: str, draft: EventDraft, now: float, ends_at: float) -> bool:
        keys = [self._window_prefix + key, self._schedule, self._carried]
        ttl = int(ends_at - now) + FORGET_SECONDS
        opened = await self._open_or_count(keys, [now, ends_at, encode_draft(draft), key, ttl])
        return bool(opened)

    async def take_due(self, now: float) -> list[EventDraft]:
        taken = await self._take_due([self._schedule, self._carried], [now, self._window_prefix])
        due = []
        for item in taken:
            draft_text, count = json.loads(item)
            due.append(dataclasses.replace(decode_draft(draft_text), count=int(count)))
        return due

    async def put_back(self, summaries: Sequence[EventDraft]) -> None:
        if summaries:
            items = [json.dumps([encode_draft(s), s.count]) for s in summaries]
            await self._redis.rpush(self._carried, *items)

    async def close(self) -> None:
        await self._redis.aclose()


# --- the mechanism ------------------------------------------------------------------------------


class RefusalSummaries:
    def __init__(self, store: WindowStore, clock: Clock = time.time) -> None:
        self.store = store
        # Replaceable, so that tests can let a window pass without waiting.
        self.clock = clock
        self._next_due_check = 0.0

    @classmethod
    def build(cls, redis_url: str | None, prefix: str) -> RefusalSummaries:
        return cls(RedisWindows(redis_url, prefix) if redis_url else MemoryWindows())

    async def admit(
        self, refusal: RateLimited, draft: EventDraft, client_address: Callable[[], str]
    ) -> EventDraft | None:
        """The event to record now (the first refusal of its window), or None (counted)."""
        now = self.clock()
        key = f"{caller_of(draft, client_address)}|{kind_of(refusal, draft)}"
        ends_at = now + max(refusal.retry_after, MIN_WINDOW_SECONDS)
        try:
            first = await self.store.open_or_count(key, draft, now, ends_at)
        except RedisError:
            # Without the shared windows, record the refusal rather than lose it.
            log.warning("refusal windows unavailable; refusal recorded on its own")
            return draft
        return draft if first else None

    async def due(self) -> list[EventDraft]:
        """Summaries whose window has passed, for the unit of work to append."""
        now = self.clock()
        if now < self._next_due_check:
            return []
        self._next_due_check = now + DUE_CHECK_SECONDS
        try:
            return await self.store.take_due(now)
        except RedisError:
            log.warning("refusal windows unavailable; summaries stay due")
            return []

    async def put_back(self, summaries: Sequence[EventDraft]) -> None:
        try:
            await self.store.put_back(summaries)
        except RedisError:
            log.error("refusal summaries lost", extra={"summaries": len(summaries)})

    async def close(self) -> None:
        await self.store.close()
