"""Administration: stores, staff and system clients (role `admin`); approvals of admins' changes
and reading the staff and client lists (role `auditor`). No customer data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.access.deps import PrincipalFor
from app.admin import service
from app.admin.schemas import (
    ClientCreate,
    ClientList,
    ClientOut,
    ClientPatch,
    ClientWithSecret,
    StaffCreate,
    StaffList,
    StaffOut,
    StaffPatch,
    StoreCreate,
    StoreList,
    StoreOut,
)
from app.auth.tokens import Principal
from app.kit.pagination import PageDep
from app.policy import Operation
from app.problems import problem_responses
from app.uow import UnitOfWorkDep

router = APIRouter(tags=["administration"], responses=problem_responses(401, 403))


# Declared first in every endpoint, so that a caller who is not an admin is refused (and the
# refusal recorded) before anything else about the request is looked at.
Admin = Annotated[Principal, PrincipalFor(Operation.ADMINISTER)]
AccountReader = Annotated[Principal, PrincipalFor(Operation.READ_ACCOUNTS)]
Approver = Annotated[Principal, PrincipalFor(Operation.APPROVE_ACCOUNTS)]
PendingFilter = Annotated[
    bool | None,
    Query(
        description="`true`: only accounts waiting for an auditor's approval; `false`: only "
        "the others; absent: all."
    ),
]


@router.post("/stores", status_code=201, response_model=StoreOut, responses=problem_responses(409))
async def create_store(admin: Admin, uow: UnitOfWorkDep, body: StoreCreate) -> StoreOut:
    """Create a store. Its code is unique (`409` otherwise)."""
    return await service.create_store(uow, admin, body)


@router.get("/stores", response_model=StoreList)
async def list_stores(admin: Admin, uow: UnitOfWorkDep, page: PageDep) -> StoreList:
    """Stores, newest first."""
    return await service.list_stores(uow, admin, page)


@router.post("/staff", status_code=201, response_model=StaffOut, responses=problem_responses(409))
async def create_staff(admin: Admin, uow: UnitOfWorkDep, body: StaffCreate) -> StaffOut:
    """Create a staff account (not an auditor: `shopvault create-auditor` makes those). The
    login is unique (`409` otherwise); the password is never returned. The account is pending
    until an auditor approves it, and its password is temporary (72 hours, to be replaced at
    the first login)."""
    return await service.create_staff(uow, admin, body)


@router.get("/staff", response_model=StaffList)
async def list_staff(
    reader: AccountReader, uow: UnitOfWorkDep, page: PageDep, pending: PendingFilter = None
) -> StaffList:
    """Staff accounts, newest first (admins and auditors)."""
    return await service.list_staff(uow, reader, page, pending)


@router.patch("/staff/{staff_id}", response_model=StaffOut, responses=problem_responses(404, 409))
async def update_staff(
    admin: Admin, uow: UnitOfWorkDep, staff_id: str, body: StaffPatch
) -> StaffOut:
    """Change a staff account. A change of role, store or password, or a deactivation, ends
    every token the person holds; a change of role, store or password, or a re-activation,
    leaves the account pending until an auditor approves it. You may not deactivate yourself,
    drop your own admin role, or set your own password here (`409`)."""
    return await service.update_staff(uow, admin, staff_id, body)


@router.post(
    "/staff/{staff_id}/approve",
    response_model=StaffOut,
    responses=problem_responses(404, 409),
)
async def approve_staff(approver: Approver, uow: UnitOfWorkDep, staff_id: str) -> StaffOut:
    """Approve the pending change of a staff account (auditors; never your own account,
    `403`): the member may log in again. `409` when nothing is pending."""
    return await service.approve_staff(uow, approver, staff_id)


@router.post(
    "/clients",
    status_code=201,
    response_model=ClientWithSecret,
    responses=problem_responses(409),
)
async def create_client(admin: Admin, uow: UnitOfWorkDep, body: ClientCreate) -> ClientWithSecret:
    """Register a system client. The answer carries its `client_secret`, shown this once. The
    client gets no token until an auditor approves it."""
    return await service.create_client(uow, admin, body)


@router.get("/clients", response_model=ClientList)
async def list_clients(
    reader: AccountReader, uow: UnitOfWorkDep, page: PageDep, pending: PendingFilter = None
) -> ClientList:
    """System clients, newest first (never their secrets; admins and auditors)."""
    return await service.list_clients(uow, reader, page, pending)


@router.patch("/clients/{client_id}", response_model=ClientOut, responses=problem_responses(404))
async def update_client(
    admin: Admin, uow: UnitOfWorkDep, client_id: str, body: ClientPatch
) -> ClientOut:
    """Change a client's role or deactivate it; either ends every token it holds. A change of
    role or a re-activation waits for an auditor's approval."""
    return await service.update_client(uow, admin, client_id, body)


@router.post(
    "/clients/{client_id}/secret",
    response_model=ClientWithSecret,
    responses=problem_responses(404),
)
async def rotate_client_secret(
    admin: Admin, uow: UnitOfWorkDep, client_id: str
) -> ClientWithSecret:
    """Issue a new secret, shown this once. The old secret and every token issued with it stop
    working at once; the new one works once an auditor approves it."""
    return await service.rotate_client_secret(uow, admin, client_id)


@router.post(
    "/clients/{client_id}/approve",
    response_model=ClientOut,
    responses=problem_responses(404, 409),
)
async def approve_client(approver: Approver, uow: UnitOfWorkDep, client_id: str) -> ClientOut:
    """Approve the pending change of a system client (auditors). `409` when nothing is pending."""
    return await service.approve_client(uow, approver, client_id)
