"""The unit of work: one transaction per request, committed before the response is sent.

Services never commit. They do their work in ``uow.session`` and ``record`` access events; the
unit of work appends the events to the chained log and commits both together, or neither. The
dependency runs with ``scope="function"``, so its exit (the commit) happens after the endpoint
has built its response and before a byte of it is sent: a failed commit becomes a ``503`` with
no data, never a lost error after the data has left.

A refusal that must be recorded (``Problem.audit_event``) rolls back the request's work, then
commits only that event before the refusal is answered. A rate-limit refusal (``RateLimited``)
goes through ``app/audit/refusals.py`` instead: only the first of its window is recorded at once,
and the summaries of passed windows ride along with the next events this unit of work appends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.events import EventDraft
from app.audit.group_commit import GroupCommit
from app.audit.refusals import RefusalSummaries
from app.audit.repository import AuditLog
from app.auth import repository as auth_repository
from app.auth.tokens import Principal
from app.client_address import Network, client_address, limit_key
from app.db import DatabaseUnavailable, SnapshotReads, wrote
from app.errors import AuditUnavailable, Problem, RateLimited, ServiceUnavailable, Unauthorized
from app.kit.deps import RuntimeDep
from app.request_context import current_request_id
from app.runtime import Runtime

log = logging.getLogger(__name__)


class UnitOfWork:
    def __init__(
        self,
        session: AsyncSession | async_sessionmaker[AsyncSession],
        audit_log: AuditLog,
        *,
        refusals: RefusalSummaries | None = None,
        request: Request | None = None,
        trusted_proxies: Sequence[Network] = (),
        group_commit: GroupCommit | None = None,
        snapshot_reads: SnapshotReads | None = None,
    ) -> None:
        self._snapshot_reads = snapshot_reads
        # Given a session maker, the session is made when first used (a read whose one
        # statement runs on the snapshot reads needs none); ``close`` then closes it.
        self._session: AsyncSession | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        if isinstance(session, AsyncSession):
            self._session = session
        else:
            self._sessions = session
        self._audit_log = audit_log
        self._group_commit = group_commit
        self._refusals = refusals
        self._request = request
        self._trusted_proxies = trusted_proxies
        self._client_address: str | None = None
        self._events: list[EventDraft] = []
        self._principal: Principal | None = None
        self._principal_verified = False
        self._after_commit: list[Callable[[], object]] = []

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            assert self._sessions is not None
            self._session = self._sessions()
        return self._session

    @property
    def snapshot_reads(self) -> SnapshotReads | None:
        """The process's snapshot reads while this unit of work has no transaction of its own
        (PostgreSQL): a statement that needs none runs there, and no session is made for it."""
        session = self._session
        if session is not None and session.in_transaction():
            return None
        return self._snapshot_reads

    async def close(self) -> None:
        """Close the session this unit of work made, if it made one."""
        if self._sessions is not None and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def record(self, event: EventDraft) -> None:
        self._events.append(event)

    def after_commit(self, action: Callable[[], object]) -> None:
        """Run ``action`` once this unit of work has committed (not if it rolls back), before
        the answer leaves. For what must follow the commit and cannot be in it (a file outside
        the database); a failure is logged, and the commit stands."""
        self._after_commit.append(action)

    def _committed(self) -> None:
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            try:
                action()
            except Exception:
                log.exception("an action after commit failed", extra={"event": "after_commit"})

    def client_address(self) -> str:
        """The address of the client (see ``app/client_address.py``); "cli" off the web."""
        if self._client_address is None:
            if self._request is None:
                self._client_address = "cli"
            else:
                peer = self._request.client.host if self._request.client else None
                forwarded = self._request.headers.getlist("x-forwarded-for")
                self._client_address = client_address(peer, forwarded, self._trusted_proxies)
        return self._client_address

    def route(self) -> str:
        """The route template of the request (``customers/{customer_id}``), for events."""
        route = self._request.scope.get("route") if self._request is not None else None
        path = getattr(route, "path", None)
        return path.lstrip("/") if isinstance(path, str) else "unmatched"

    async def end_reads(self) -> None:
        """End the transaction so far, which has only read. Slow work that follows (Argon2)
        then holds no database lock: on SQLite every transaction holds the write lock."""
        if self._session is not None and self._session.in_transaction():
            await self.rollback()

    def bind_principal(self, principal: Principal) -> None:
        self._principal = principal
        self._principal_verified = False

    def principal_verified(self, is_current: bool) -> None:
        """For queries that carried ``principal_is_current`` themselves."""
        if not is_current:
            raise Unauthorized("The token is no longer valid.")
        self._principal_verified = True

    async def verify_principal(self) -> None:
        if self._principal is None or self._principal_verified:
            return
        self.principal_verified(await auth_repository.is_current(self.session, self._principal))

    async def commit(self) -> None:
        try:
            await self.verify_principal()
        except DatabaseUnavailable as exc:
            # For a route with no query of its own, this is the request's first database call.
            await self.rollback()
            raise ServiceUnavailable() from exc
        events, self._events = self._events, []
        # Only a unit of work that appends anyway carries the summaries (no write of its own).
        summaries = await self._refusals.due() if events and self._refusals is not None else []
        drafts, request_id = [*summaries, *events], current_request_id()
        try:
            if events and self._group_commit is not None and not await self._wrote():
                # Only events to write: end the read, commit them with other requests' events.
                if self._session is not None:
                    await self._session.rollback()
                await self._group_commit.append(drafts, request_id=request_id)
            else:
                await self._audit_log.commit(
                    self.session, drafts, request_id=request_id, at=self._audit_log.now()
                )
        except DatabaseUnavailable as exc:
            await self.rollback()
            if summaries and self._refusals is not None:
                await self._refusals.put_back(summaries)
            raise AuditUnavailable() from exc
        self._committed()

    async def _wrote(self) -> bool:
        session = self._session
        if session is None:
            return False
        if session.new or session.dirty or session.deleted:
            return True
        if not session.in_transaction():
            return False
        return wrote(await session.connection())

    async def fail(self, problem: Problem) -> None:
        """Roll back; then, for a valid caller, commit the refusal's own event if it has one
        (a rate-limit refusal's only if it is the first of its window)."""
        await self.rollback()
        self._events = []
        try:
            await self.verify_principal()
        except DatabaseUnavailable as exc:
            raise ServiceUnavailable() from exc
        event = problem.audit_event
        if event is not None and isinstance(problem, RateLimited) and self._refusals is not None:
            event = await self._refusals.admit(
                problem, event, lambda: limit_key(self.client_address())
            )
        if event is not None:
            self.record(event)
            await self.commit()

    async def rollback(self) -> None:
        self._after_commit = []
        session = self._session
        if session is None:
            return
        try:
            await session.rollback()
        except DatabaseUnavailable:
            # The connection is gone; the transaction is gone with it.
            await session.invalidate()


@asynccontextmanager
async def request_unit_of_work(runtime: Runtime, request: Request) -> AsyncIterator[UnitOfWork]:
    """A request's unit of work: committed when the block ends, before the answer is sent; a
    refusal (``Problem``) raised in it commits only its own event (``UnitOfWork.fail``); a
    database that went away becomes ``ServiceUnavailable``."""
    uow = UnitOfWork(
        runtime.sessions,
        runtime.audit_log,
        refusals=runtime.refusals,
        request=request,
        trusted_proxies=runtime.settings.trusted_proxy_networks,
        group_commit=runtime.group_commit,
        snapshot_reads=runtime.snapshot_reads,
    )
    try:
        yield uow
    except Problem as problem:
        await uow.fail(problem)
        raise
    except DatabaseUnavailable as exc:
        await uow.rollback()
        raise ServiceUnavailable() from exc
    except BaseException:
        await uow.rollback()
        raise
    else:
        await uow.commit()
    finally:
        await uow.close()


async def unit_of_work(runtime: RuntimeDep, request: Request) -> AsyncIterator[UnitOfWork]:
    async with request_unit_of_work(runtime, request) as uow:
        yield uow


UnitOfWorkDep = Annotated[UnitOfWork, Depends(unit_of_work, scope="function")]
