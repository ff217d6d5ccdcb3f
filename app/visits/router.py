"""``/visits``: receptions at the caller's store. Store staff only; no purpose header, except
to read the visits' free text (notes, a repair's symptom), which is text about a person."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends

from app.access.context import PURPOSE_HEADER, REASON_HEADER, parse_purpose, parse_reason
from app.access.deps import PrincipalFor
from app.auth.deps import CurrentPrincipal
from app.auth.tokens import Principal
from app.kit import idempotency
from app.kit.deps import IdempotencyKeyHeader, RuntimeDep
from app.kit.pagination import PageDep
from app.policy import Operation
from app.presence.schemas import PresenceAgain
from app.problems import problem_responses
from app.uow import UnitOfWorkDep
from app.visits import service
from app.visits.schemas import VisitCreate, VisitList, VisitPatch, VisitView

router = APIRouter(prefix="/visits", tags=["visits"], responses=problem_responses(400, 401, 403))

StoreStaff = Annotated[Principal, PrincipalFor(Operation.WORK_VISITS)]

TEXT_NOTE = (
    " Notes and a repair's symptom are answered only with an `X-Access-Purpose` whose policy row"
    " gives `repairs` (e.g. technician `repair`), and only for visits that justify it: open, with"
    " their customer attached (a repair visit, for a technician) — or a manager's"
    " `X-Access-Reason` (queued for review). That read is an access event. Without the header"
    " the two fields are left out."
)


async def _text_request(
    _caller: CurrentPrincipal,  # the token is checked (401) before the headers (400)
    purpose: Annotated[str | None, PURPOSE_HEADER] = None,
    reason: Annotated[str | None, REASON_HEADER] = None,
) -> service.TextRequest | None:
    if purpose is None and reason is None:
        return None
    return service.TextRequest(
        parse_purpose(purpose) if purpose is not None else None, parse_reason(reason)
    )


TextAsked = Annotated[service.TextRequest | None, Depends(_text_request)]


@router.post(
    "",
    status_code=201,
    response_model=VisitView,
    response_model_exclude_unset=True,
    responses=problem_responses(404, 409),
    description="Open a visit at your store, optionally for a customer (attaching is an access "
    "event)." + TEXT_NOTE,
)
async def open_visit(
    asked: TextAsked,
    principal: StoreStaff,
    body: VisitCreate,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> VisitView:
    return await service.open_visit(
        uow,
        runtime,
        principal,
        body,
        idempotency_key=idempotency.parse_key(idempotency_key),
        asked=asked,
    )


@router.get(
    "",
    response_model=VisitList,
    response_model_exclude_unset=True,
    description="Your store's open visits, newest first (a terminal finds its receptions after "
    "a restart). `status=stale` (managers only): the store's repair visits open for more than "
    "30 days without a status change." + TEXT_NOTE,
)
async def list_visits(
    asked: TextAsked,
    principal: StoreStaff,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    page: PageDep,
    status: Literal["open", "stale"] = "open",
) -> VisitList:
    return await service.list_visits(
        uow, runtime, principal, page, stale=status == "stale", asked=asked
    )


@router.get(
    "/{visit_id}",
    response_model=VisitView,
    response_model_exclude_unset=True,
    responses=problem_responses(404),
    description="One visit of your store. With its free text, a repair's `history` too: each "
    "status it reached, when and by whom." + TEXT_NOTE,
)
async def get_visit(
    asked: TextAsked,
    principal: StoreStaff,
    visit_id: str,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> VisitView:
    return await service.get_visit(uow, runtime, principal, visit_id, asked=asked)


@router.patch(
    "/{visit_id}",
    response_model=VisitView,
    response_model_exclude_unset=True,
    responses=problem_responses(404, 409),
    description="Attach a customer (once), change notes, or move the repair status forward."
    + TEXT_NOTE,
)
async def update_visit(
    asked: TextAsked,
    principal: StoreStaff,
    visit_id: str,
    body: VisitPatch,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> VisitView:
    return await service.update_visit(uow, runtime, principal, visit_id, body, asked=asked)


@router.post(
    "/{visit_id}/presence",
    response_model=VisitView,
    response_model_exclude_unset=True,
    responses=problem_responses(404, 409),
)
async def prove_presence_again(
    asked: TextAsked,
    principal: StoreStaff,
    visit_id: str,
    body: PresenceAgain,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> VisitView:
    """The visit's customer is back at the counter (e.g. to pick up a repair) and proves
    presence again: `presence` as when attaching (a manager may send `X-Access-Reason`
    instead). A repair visit then justifies access again for `VISIT_AUTO_CLOSE_HOURS`."""
    return await service.prove_presence_again(uow, runtime, principal, visit_id, body, asked=asked)


@router.post(
    "/{visit_id}/close",
    response_model=VisitView,
    response_model_exclude_unset=True,
    responses=problem_responses(404, 409),
)
async def close_visit(
    principal: StoreStaff, visit_id: str, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> VisitView:
    """Close a visit."""
    return await service.close_visit(uow, runtime, principal, visit_id)
