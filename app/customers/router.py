"""``/customers`` and ``/contracts``: purpose-bound access to customer records."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from app import idempotency
from app.access.context import AccessContextDep
from app.customers import service
from app.customers.schemas import (
    ContractCreate,
    ContractPatch,
    ContractView,
    CustomerCreate,
    CustomerPatch,
    CustomerView,
    SearchRequest,
    SearchResult,
)
from app.problems import problem_responses
from app.uow import RuntimeDep, UnitOfWorkDep

router = APIRouter(tags=["customers"], responses=problem_responses(400, 401, 403))
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="A retry with the same key and body gets the first answer, "
        "not a second record.",
    ),
]


@router.post(
    "/customers",
    status_code=201,
    response_model=CustomerView,
    response_model_exclude_unset=True,
    responses=problem_responses(409),
)
async def create_customer(
    body: CustomerCreate,
    ctx: AccessContextDep,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    idempotency_key: IdempotencyKey = None,
) -> CustomerView:
    """Register a customer (purpose `contract`, within an open visit given by `X-Visit-Id`).

    The customer is attached to the visit. Answers the customer as the policy shows it."""
    return await service.create_customer(
        uow, runtime, ctx, body, idempotency_key=idempotency.parse_key(idempotency_key)
    )


@router.post("/customers/search", response_model=SearchResult, responses=problem_responses(429))
async def search_customers(
    body: SearchRequest, ctx: AccessContextDep, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> SearchResult:
    """Exact-match search: `phone`; or `email`; or `name_kana` with `date_of_birth`.

    At most 5 matches, each only `id` and a masked `display_name`. No visit or reason needed;
    rate-limited per caller. Search terms travel only in this body, never in a URL."""
    return await service.search_customers(uow, runtime, ctx, body)


@router.get(
    "/customers/{customer_id}",
    response_model=CustomerView,
    response_model_exclude_unset=True,
    responses=problem_responses(404),
)
async def read_customer(
    customer_id: str, ctx: AccessContextDep, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> CustomerView:
    """The customer record: exactly the field groups the policy gives your role and purpose."""
    return await service.disclose_customer(uow, runtime, ctx, customer_id)


@router.patch(
    "/customers/{customer_id}",
    response_model=CustomerView,
    response_model_exclude_unset=True,
    responses=problem_responses(404),
)
async def correct_customer(
    customer_id: str,
    body: CustomerPatch,
    ctx: AccessContextDep,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> CustomerView:
    """Correct a customer's data (purposes `contract`, `support`, `subject_request`).

    Only fields of groups your role sees for the purpose; the event names the changed fields."""
    return await service.correct_customer(uow, runtime, ctx, customer_id, body)


@router.post(
    "/customers/{customer_id}/contracts",
    status_code=201,
    response_model=ContractView,
    responses=problem_responses(404),
)
async def open_contract(
    customer_id: str,
    body: ContractCreate,
    ctx: AccessContextDep,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> ContractView:
    """Open a contract (purpose `contract`)."""
    return await service.open_contract(uow, runtime, ctx, customer_id, body)


@router.patch(
    "/contracts/{contract_id}",
    response_model=ContractView,
    responses=problem_responses(404, 409),
)
async def terminate_contract(
    contract_id: str,
    body: ContractPatch,
    ctx: AccessContextDep,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> ContractView:
    """Terminate a contract (purpose `contract`): `status: "terminated"`, optional `ended_on`."""
    return await service.terminate_contract(uow, runtime, ctx, contract_id, body)
