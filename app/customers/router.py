"""``/customers``: purpose-bound access to customer records."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from app.access.context import AccessContext
from app.access.deps import AccessTo
from app.customers import service
from app.customers.schemas import (
    CustomerCreate,
    CustomerPatch,
    CustomerView,
    SearchRequest,
    SearchResult,
)
from app.kit import idempotency
from app.kit.deps import IdempotencyKeyHeader, RuntimeDep
from app.policy import Operation
from app.problems import problem_responses
from app.uow import UnitOfWorkDep

router = APIRouter(tags=["customers"], responses=problem_responses(400, 401, 403))

# Each route's first parameter admits the caller for its operation (token, purpose, the policy
# row, a visit or reason) before the body is looked at.
RegisterCustomer = Annotated[AccessContext, AccessTo(Operation.REGISTER_CUSTOMER)]
SearchCustomers = Annotated[AccessContext, AccessTo(Operation.SEARCH_CUSTOMERS)]
ReadCustomer = Annotated[AccessContext, AccessTo(Operation.READ_CUSTOMER)]
CorrectCustomer = Annotated[AccessContext, AccessTo(Operation.CORRECT_CUSTOMER)]


@router.post(
    "/customers",
    status_code=201,
    response_model=CustomerView,
    response_model_exclude_unset=True,
    responses=problem_responses(409),
)
async def create_customer(
    ctx: RegisterCustomer,
    body: CustomerCreate,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> CustomerView:
    """Register a customer (purpose `contract`, within an open visit given by `X-Visit-Id`).

    The customer is attached to the visit. Answers the customer as the policy shows it."""
    return await service.create_customer(
        uow, runtime, ctx, body, idempotency_key=idempotency.parse_key(idempotency_key)
    )


@router.post("/customers/search", response_model=SearchResult, responses=problem_responses(429))
async def search_customers(
    ctx: SearchCustomers, body: SearchRequest, runtime: RuntimeDep, uow: UnitOfWorkDep
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
    ctx: ReadCustomer, customer_id: str, runtime: RuntimeDep, uow: UnitOfWorkDep
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
    ctx: CorrectCustomer,
    customer_id: str,
    body: CustomerPatch,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
) -> CustomerView:
    """Correct a customer's data (purposes `contract`, `support`, `subject_request`).

    Only fields of groups your role sees for the purpose; the event names the changed fields."""
    return await service.correct_customer(uow, runtime, ctx, customer_id, body)
