"""Keeping the access log provably whole: verification and checkpoints, for the API and the CLI.

Both run as blocking code on their own connections (the API runs them in a worker thread): a
verification streams the whole log and must not hold up the event loop. A verification reads one
snapshot; on SQLite it opens a deferred (read) transaction, so that writers are not held up.

The checkpoint file's exclusive lock is held for a whole verification, so that the checkpoint it
writes links to the line it compared with. Appenders only *try* the lock: a periodic checkpoint
is skipped, never waited for, while a verification runs (the verification's own checkpoint
follows it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert
from sqlalchemy.pool import NullPool

from app.audit.chain import AuditKeys
from app.audit.checkpoints import (
    APPEND,
    PRUNE,
    VERIFY,
    Checkpoint,
    CheckpointFile,
    LockedFile,
    fold_lines,
    make_checkpoint,
)
from app.audit.verify import (
    Finding,
    Verification,
    changed_heads,
    checkpoint_lines,
    compare_heads,
    verify,
)
from app.config import Settings
from app.db import SQLITE_BUSY_TIMEOUT_MS, WriterQueue, create_sync_engine, is_sqlite, sync_url
from app.keys import load_keys
from app.models import AuditCheckpoint
from app.models.base import utcnow

log = logging.getLogger("shopvault.audit.integrity")

CHECKPOINT_INTERVAL = timedelta(minutes=1)


def _read_engine(url: str) -> Engine:
    if not is_sqlite(url):
        return create_engine(sync_url(url), poolclass=NullPool, isolation_level="REPEATABLE READ")
    engine = create_engine(sync_url(url), poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")  # deferred: a snapshot from the first read on

    return engine


class AuditIntegrity:
    def __init__(
        self,
        settings: Settings,
        keys: AuditKeys,
        *,
        clock: Callable[[], datetime] = utcnow,
        interval: timedelta = CHECKPOINT_INTERVAL,
    ) -> None:
        self.keys = keys
        self.file = CheckpointFile(settings.resolved_checkpoint_file, keys)
        self.clock = clock
        self.interval = interval
        url = settings.resolved_database_url
        self._read = _read_engine(url)
        self._write = create_sync_engine(url)

    def dispose(self) -> None:
        self._read.dispose()
        self._write.dispose()

    def verify(self, *, full: bool) -> Verification:
        """Verify (from the last verified checkpoint, or everything) and, if it passed, write a
        checkpoint of the verified heads."""
        with self.file.locked() as locked:
            assert locked is not None
            with self._read.connect() as connection, connection.begin():
                after = locked.last.n if locked.last else 0
                fold = fold_lines(self.keys, checkpoint_lines(connection, after=after), locked.fold)
                result = verify(connection, self.keys, fold, full=full)
            if result.ok:
                self._write_checkpoint(locked, VERIFY, changed_heads(result.heads, locked.fold))
            else:
                log.error(
                    "access log verification failed",
                    extra={"problems": sorted({f.problem for f in result.findings})},
                )
            return result

    def checkpoint_if_due(self, *, force: bool = False) -> list[Finding] | None:
        """The periodic checkpoint: written when the newest line is older than the interval (or
        ``force``) and the committed heads pass the comparison with it. None: not written."""
        with self.file.locked(wait=False) as locked:
            if locked is None:
                return None  # a verification (or another process) holds it
            last = locked.last
            if not force and last is not None and self.clock() - last.at_datetime < self.interval:
                return None
            with self._read.connect() as connection, connection.begin():
                current, findings = compare_heads(connection, self.keys, locked.fold)
            if findings:
                # Never move the checkpoint onto a log that went backwards: report instead.
                log.error(
                    "audit checkpoint refused",
                    extra={"problems": sorted({f.problem for f in findings})},
                )
                return findings
            changed = changed_heads(current, locked.fold)
            if changed:
                self._write_checkpoint(locked, APPEND, changed)
            return []

    def record_anchors(self, anchors: dict[str, Any]) -> None:
        """Sign where each pruned chain starts now, before its prefix is deleted (a prune that
        fails afterwards leaves events before the anchor, which verification skips)."""
        with self.file.locked() as locked:
            assert locked is not None
            self._write_checkpoint(locked, PRUNE, {}, anchors=anchors)

    def anchors(self) -> dict[str, Any]:
        """The anchors the checkpoint file holds so far."""
        return dict(self.file.read().anchors)

    def _write_checkpoint(
        self,
        locked: LockedFile,
        kind: str,
        heads: dict[str, Any],
        *,
        anchors: dict[str, Any] | None = None,
    ) -> None:
        checkpoint = make_checkpoint(
            self.keys,
            previous=locked.last,
            at=self.clock(),
            kind=kind,
            heads=heads,
            anchors=anchors,
        )
        locked.append(checkpoint)  # outside the database first: that copy is the one that counts
        try:
            self._store(checkpoint)
        except Exception:
            log.exception("checkpoint not copied into the database")

    def _store(self, checkpoint: Checkpoint) -> None:
        with self._write.begin() as connection:
            _insert_checkpoint(connection, checkpoint)


def verify_log(settings: Settings, *, full: bool) -> Verification:
    """``shopvault audit verify [--full]``: imports only what verification needs, since a
    large log's verification waits for nothing else."""
    integrity = AuditIntegrity(settings, AuditKeys.derive(load_keys(settings).index))
    try:
        return integrity.verify(full=full)
    finally:
        integrity.dispose()


def _insert_checkpoint(connection: Connection, checkpoint: Checkpoint) -> None:
    connection.execute(
        insert(AuditCheckpoint).values(
            hash=checkpoint.hash,
            n=checkpoint.n,
            at=checkpoint.at_datetime,
            line=checkpoint.line(),
        )
    )


class CheckpointScheduler:
    """Checkpoints while events are written, by the process that writes them (no daemon).

    Told of each committed append: if the interval has passed since this process last looked, a
    checkpoint is tried at once (in a worker thread: the request does not wait); and a timer
    makes sure that the events of the last minute are checkpointed even if no append follows."""

    def __init__(
        self,
        integrity: AuditIntegrity,
        *,
        timer_seconds: float | None = None,
        writers: WriterQueue | None = None,
    ) -> None:
        self.integrity = integrity
        # On SQLite the checkpoint waits its turn with the process's requests (``app/db.py``)
        # rather than in SQLite's busy handler, and they do not wait in it behind the checkpoint.
        self._writers = writers
        self.timer_seconds = (
            integrity.interval.total_seconds() if timer_seconds is None else timer_seconds
        )
        self._last_try: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending = False  # appends since the last checkpoint attempt
        self._closing = False

    def on_append(self, _rows: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._pending = True
        now = self.integrity.clock()
        if self._last_try is None or now - self._last_try >= self.integrity.interval:
            self._start(loop, force=False)
        else:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and not self._closing:
            self._timer = loop.call_later(self.timer_seconds, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._pending:
            self._start(loop, force=True)

    def _start(self, loop: asyncio.AbstractEventLoop, *, force: bool) -> None:
        if self._task is not None and not self._task.done():
            self._arm(loop)  # try again after the running one
            return
        self._last_try = self.integrity.clock()
        self._pending = False
        self._task = loop.create_task(self._run(force))

    async def _run(self, force: bool) -> None:
        try:
            if self._writers is None:
                written = await asyncio.to_thread(self.integrity.checkpoint_if_due, force=force)
            else:
                async with self._writers.held():
                    written = await asyncio.to_thread(self.integrity.checkpoint_if_due, force=force)
        except Exception:
            log.exception("audit checkpoint failed")
            written = None
        if written is None:
            # Not written (another writer held the file, wrote a moment ago, or it failed):
            # this process's events still need a checkpoint, so try again later.
            self._pending = True
            self._arm(asyncio.get_running_loop())

    async def drain(self) -> None:
        """Wait for a running checkpoint (tests, shutdown)."""
        if self._task is not None:
            await self._task

    async def close(self) -> None:
        """At shutdown: cover this process's last events."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.drain()
        if self._pending:
            self._pending = False
            await self._run(force=True)
