"""``/visits``: receptions at the caller's store. No purpose header; store staff only."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query

from app import idempotency
from app.auth.deps import CurrentPrincipal
from app.problems import problem_responses
from app.uow import RuntimeDep, UnitOfWorkDep
from app.visits import service
from app.visits.schemas import VisitCreate, VisitList, VisitPatch, VisitView

router = APIRouter(prefix="/visits", tags=["visits"], responses=problem_responses(401, 403))


@router.post(
    "", status_code=201, response_model=VisitView, responses=problem_responses(400, 404, 409)
)
async def open_visit(
    body: VisitCreate,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> VisitView:
    """Open a visit at your store, optionally for a customer (attaching is an access event)."""
    return await service.open_visit(
        uow, runtime, principal, body, idempotency_key=idempotency.parse_key(idempotency_key)
    )


@router.get("", response_model=VisitList)
async def list_visits(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    status: Literal["open"] = "open",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> VisitList:
    """Your store's open visits, newest first (a terminal finds its receptions after a restart)."""
    return await service.list_open_visits(uow, runtime, principal, limit=limit, cursor=cursor)


@router.get("/{visit_id}", response_model=VisitView, responses=problem_responses(404))
async def get_visit(
    visit_id: str, principal: CurrentPrincipal, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> VisitView:
    """One visit of your store."""
    return await service.get_visit(uow, runtime, principal, visit_id)


@router.patch("/{visit_id}", response_model=VisitView, responses=problem_responses(404, 409))
async def update_visit(
    visit_id: str,
    body: VisitPatch,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> VisitView:
    """Attach a customer (once), change notes, or move the repair status forward."""
    return await service.update_visit(uow, runtime, principal, visit_id, body)


@router.post("/{visit_id}/close", response_model=VisitView, responses=problem_responses(404, 409))
async def close_visit(
    visit_id: str, principal: CurrentPrincipal, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> VisitView:
    """Close a visit."""
    return await service.close_visit(uow, runtime, principal, visit_id)
