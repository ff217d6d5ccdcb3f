"""``/customers/{id}/contracts`` and ``/contracts/{id}``: a customer's contracts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from app.access.context import AccessContext
from app.access.deps import AccessTo
from app.contracts import service
from app.contracts.schemas import ContractCreate, ContractPatch, ContractView
from app.kit.deps import RuntimeDep
from app.policy import Operation
from app.problems import problem_responses
from app.uow import UnitOfWorkDep

router = APIRouter(tags=["contracts"], responses=problem_responses(400, 401, 403))

OpenContract = Annotated[AccessContext, AccessTo(Operation.OPEN_CONTRACT)]
TerminateContract = Annotated[AccessContext, AccessTo(Operation.TERMINATE_CONTRACT)]


@router.post(
    "/customers/{customer_id}/contracts",
    status_code=201,
    response_model=ContractView,
    response_model_exclude_unset=True,
    responses=problem_responses(404),
)
async def open_contract(
    ctx: OpenContract,
    customer_id: str,
    body: ContractCreate,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> ContractView:
    """Open a contract (purpose `contract`). The answer carries only the groups your policy row
    gives (`contracts`, `device`, `billing`)."""
    return await service.open_contract(uow, runtime, ctx, customer_id, body)


@router.patch(
    "/contracts/{contract_id}",
    response_model=ContractView,
    response_model_exclude_unset=True,
    responses=problem_responses(404, 409),
)
async def terminate_contract(
    ctx: TerminateContract,
    contract_id: str,
    body: ContractPatch,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> ContractView:
    """Terminate a contract (purpose `contract`): `status: "terminated"`, optional `ended_on`."""
    return await service.terminate_contract(uow, runtime, ctx, contract_id, body)
