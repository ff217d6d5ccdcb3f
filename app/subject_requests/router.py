"""Customers' requests (APPI): ``POST /customers/{id}/subject-requests``,
``GET /subject-requests``, ``POST /subject-requests/{id}/close``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.access.context import AccessContext
from app.access.deps import AccessTo
from app.kit.deps import RuntimeDep
from app.kit.pagination import PageDep
from app.policy import Operation
from app.problems import problem_responses
from app.subject_requests import service
from app.subject_requests.schemas import (
    SubjectRequestClose,
    SubjectRequestCreate,
    SubjectRequestList,
    SubjectRequestView,
)
from app.uow import UnitOfWorkDep

router = APIRouter(tags=["subject-requests"], responses=problem_responses(400, 401, 403))

RegisterRequest = Annotated[AccessContext, AccessTo(Operation.REGISTER_SUBJECT_REQUEST)]
ReadRequests = Annotated[AccessContext, AccessTo(Operation.READ_SUBJECT_REQUESTS)]
CloseRequest = Annotated[AccessContext, AccessTo(Operation.CLOSE_SUBJECT_REQUEST)]


@router.post(
    "/customers/{customer_id}/subject-requests",
    status_code=201,
    response_model=SubjectRequestView,
    responses=problem_responses(404),
)
async def register_request(
    ctx: RegisterRequest,
    customer_id: str,
    body: SubjectRequestCreate,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> SubjectRequestView:
    """Register a customer's request (manager, purpose `subject_request`, with `X-Visit-Id` of
    a visit where the customer proved presence, or `X-Access-Reason` — then the request and its
    event are `review_required`). Due in `SUBJECT_REQUEST_DUE_DAYS` (14) days."""
    return await service.register_request(uow, runtime, ctx, customer_id, body)


@router.get("/subject-requests", response_model=SubjectRequestList)
async def list_requests(
    ctx: ReadRequests,
    uow: UnitOfWorkDep,
    page: PageDep,
    open: Annotated[bool | None, Query(description="Only open (or only closed) requests.")] = None,
    overdue: Annotated[bool, Query(description="Only open requests past their due date.")] = False,
) -> SubjectRequestList:
    """The register, newest first: a manager's own store (purpose `subject_request`), or every
    store for an auditor (purpose `audit`). Reading it is recorded."""
    return await service.list_requests(uow, ctx, open_only=open, overdue=overdue, page=page)


@router.post(
    "/subject-requests/{request_id}/close",
    response_model=SubjectRequestView,
    responses=problem_responses(404, 409),
)
async def close_request(
    ctx: CloseRequest, request_id: str, body: SubjectRequestClose, uow: UnitOfWorkDep
) -> SubjectRequestView:
    """Close a request of your store with its outcome (`409` if closed already)."""
    return await service.close_request(uow, ctx, request_id, body)
