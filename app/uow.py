"""The unit of work: one transaction per request, committed before the response is sent.

Services never commit. They do their work in ``uow.session`` and ``record`` access events; the
unit of work appends the events to the chained log and commits both together, or neither. The
dependency runs with ``scope="function"``, so its exit (the commit) happens after the endpoint
has built its response and before a byte of it is sent: a failed commit becomes a ``503`` with
no data, never a lost error after the data has left.

A refusal that must be recorded (``Problem.audit_event``) rolls back the request's work, then
commits only that event before the refusal is answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.events import EventDraft
from app.audit.repository import AuditLog
from app.auth import repository as auth_repository
from app.auth.tokens import Principal
from app.errors import AuditUnavailable, Problem, ServiceUnavailable, Unauthorized
from app.request_context import current_request_id
from app.runtime import Runtime


class UnitOfWork:
    def __init__(self, session: AsyncSession, audit_log: AuditLog) -> None:
        self.session = session
        self._audit_log = audit_log
        self._events: list[EventDraft] = []
        self._principal: Principal | None = None
        self._principal_verified = False

    def record(self, event: EventDraft) -> None:
        self._events.append(event)

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
        except SQLAlchemyError as exc:
            # For a route with no query of its own, this is the request's first database call.
            await self.rollback()
            raise ServiceUnavailable() from exc
        events, self._events = self._events, []
        try:
            await self._audit_log.commit(
                self.session, events, request_id=current_request_id(), at=self._audit_log.now()
            )
        except SQLAlchemyError as exc:
            await self.rollback()
            raise AuditUnavailable() from exc

    async def fail(self, problem: Problem) -> None:
        """Roll back; then, for a valid caller, commit the refusal's own event if it has one."""
        await self.rollback()
        self._events = []
        try:
            await self.verify_principal()
        except SQLAlchemyError as exc:
            raise ServiceUnavailable() from exc
        if problem.audit_event is not None:
            self.record(problem.audit_event)
            await self.commit()

    async def rollback(self) -> None:
        try:
            await self.session.rollback()
        except SQLAlchemyError:
            # The connection is gone; the transaction is gone with it.
            await self.session.invalidate()


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(runtime_of)]


async def unit_of_work(runtime: RuntimeDep) -> AsyncIterator[UnitOfWork]:
    async with runtime.sessions() as session:
        uow = UnitOfWork(session, runtime.audit_log)
        try:
            yield uow
        except Problem as problem:
            await uow.fail(problem)
            raise
        except SQLAlchemyError as exc:
            await uow.rollback()
            raise ServiceUnavailable() from exc
        except BaseException:
            await uow.rollback()
            raise
        else:
            await uow.commit()


UnitOfWorkDep = Annotated[UnitOfWork, Depends(unit_of_work, scope="function")]
