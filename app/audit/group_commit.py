"""Group commit of the events of read-only requests.

A request that wrote nothing (a read, a search, a refusal) has only its access events to commit.
Those need to be committed before the answer leaves, not in a transaction of their own: the
requests of one process hand their events to the process's ``GroupCommit`` and wait; it appends
whatever has queued since its last commit to one chain, in one transaction, and then lets every
one of those requests answer. While one batch commits the next one gathers, so a busy process
commits many reads at once and an idle one commits each at once (no timer, no added wait).

A batch that fails to commit fails every request in it (``503``, no data), and its chain is
retired like any chain whose commit failed. A request that wrote something keeps its events in
its own transaction (``app/uow.py``): the data and the event commit together, or neither.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.events import EventDraft
from app.audit.repository import Appended, AuditLog

log = logging.getLogger("shopvault.audit")

# The most requests whose events go into one transaction.
MAX_BATCH = 64


@dataclass(frozen=True)
class _Waiting:
    appended: Appended
    done: asyncio.Future[None]


class GroupCommit:
    """This process's writer of read-only requests' events."""

    def __init__(
        self,
        audit_log: AuditLog,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._audit_log = audit_log
        self._sessions = sessions
        self._max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # committed transactions, for tests and metrics

    async def append(self, drafts: Sequence[EventDraft], *, request_id: str) -> None:
        """Return once the drafts are committed; raise what the commit raised if it failed."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(
            Appended(drafts, request_id, self._audit_log.now()), loop.create_future()
        )
        self._queue.append(waiting)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        # A caller that goes away (a client that hung up) leaves its events to be committed.
        await asyncio.shield(waiting.done)

    async def _run(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                async with self._sessions() as session:
                    await self._audit_log.commit_groups(session, [w.appended for w in batch])
            except BaseException as exc:
                for waiting in batch:
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.batches += 1
            for waiting in batch:
                if not waiting.done.done():
                    waiting.done.set_result(None)

    async def drain(self) -> None:
        """Wait until every event handed over so far is committed (or failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
