"""The customer's rights (APPI): ``GET /customers/{id}/export``, ``POST /customers/{id}/suspend``
and ``/resume``, ``DELETE /customers/{id}``. Manager, purpose ``subject_request``, with a reason
or ``X-Subject-Request-Id`` of an open request of the kind the operation needs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app.access.context import AccessContext
from app.access.deps import AccessTo
from app.kit.deps import RuntimeDep
from app.policy import Operation
from app.problems import problem_responses
from app.rights import service
from app.rights.printable import render_export
from app.rights.schemas import CustomerExport, Erasure, UseState
from app.uow import UnitOfWorkDep

router = APIRouter(tags=["customers"], responses=problem_responses(400, 401, 403))

ExportCustomer = Annotated[AccessContext, AccessTo(Operation.EXPORT_CUSTOMER)]
SuspendUse = Annotated[AccessContext, AccessTo(Operation.SUSPEND_USE)]
ResumeUse = Annotated[AccessContext, AccessTo(Operation.RESUME_USE)]
EraseCustomer = Annotated[AccessContext, AccessTo(Operation.ERASE_CUSTOMER)]


@router.get(
    "/customers/{customer_id}/export",
    response_model=CustomerExport,
    responses={
        **problem_responses(404),
        200: {"content": {"text/html": {"schema": {"type": "string"}}}},
    },
)
async def export_customer(
    ctx: ExportCustomer,
    customer_id: str,
    request: Request,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    format: Annotated[
        Literal["json", "html"] | None,
        Query(description="`html`: a printable page (also chosen by `Accept: text/html`)."),
    ] = None,
) -> CustomerExport | HTMLResponse:
    """Everything held on the customer (disclosure): the record with every group — the full
    document number included — contracts, visits, repairs, paper forms, consents with their
    history, messages and the access report. A reason (reviewed) or `X-Subject-Request-Id` of
    an open `disclosure` request; never cached."""
    result = await service.export_customer(uow, runtime, ctx, customer_id)
    wants_html = format == "html" or (
        format is None and "text/html" in request.headers.get("accept", "")
    )
    if not wants_html:
        return result
    return HTMLResponse(render_export(result), headers={"Cache-Control": "no-store"})


@router.post(
    "/customers/{customer_id}/suspend",
    response_model=UseState,
    responses=problem_responses(404, 409),
)
async def suspend_use(
    ctx: SuspendUse, customer_id: str, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> UseState:
    """Suspend the use of the customer's data: afterwards only `subject_request` and `audit`
    access, and no message but an urgent `important_notice` (`409` if suspended already)."""
    return await service.change_use(uow, runtime, ctx, customer_id, suspend=True)


@router.post(
    "/customers/{customer_id}/resume",
    response_model=UseState,
    responses=problem_responses(404, 409),
)
async def resume_use(
    ctx: ResumeUse, customer_id: str, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> UseState:
    """Resume the use of the customer's data (`409` if it is not suspended)."""
    return await service.change_use(uow, runtime, ctx, customer_id, suspend=False)


@router.delete(
    "/customers/{customer_id}",
    response_model=Erasure,
    responses=problem_responses(404, 409),
)
async def erase_customer(
    ctx: EraseCustomer, customer_id: str, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> Erasure:
    """Erase the customer: the identity-verification record is kept (usable only for fraud
    prevention and audit) until 3 years after the last contract ended; everything else is
    destroyed now (data key, proofs of presence, blind-index values, rows). `409` while a
    contract is active; `404` once erased."""
    return await service.erase_customer(uow, runtime, ctx, customer_id)
