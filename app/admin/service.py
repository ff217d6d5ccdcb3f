"""Administration: stores, staff and system clients. Every action, reads included, is recorded.

A change that alters what someone may do (role, store, password, secret, deactivation) bumps
their ``auth_epoch``, so every token they already hold stops working at once.

Maker–checker: an admin's change that gives someone a way to customer data (creating,
re-activating, or changing the role or store of a member; setting their password; creating,
re-activating, re-keying or re-roling a client whose role reads personal data) leaves the account
``pending_approval`` until an auditor approves it. A password an admin sets is temporary.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement

from app.admin import repository
from app.admin.repository import DuplicateKey, Listed
from app.admin.schemas import (
    ClientCreate,
    ClientList,
    ClientOut,
    ClientPatch,
    ClientWithSecret,
    OpeningHours,
    StaffCreate,
    StaffList,
    StaffOut,
    StaffPatch,
    StoreCreate,
    StoreList,
    StoreOut,
)
from app.audit.events import Action, EventDraft, denied_event
from app.auth.passwords import (
    TEMPORARY_PASSWORD_LIFETIME,
    hash_client_secret,
    hash_password_async,
    new_client_secret,
)
from app.auth.service import check_password_policy
from app.auth.tokens import Principal
from app.errors import Conflict, NotFound, OwnAccountApproval, ValidationFailed
from app.kit.pagination import Keyset, PageRequest, cut_page
from app.models import Staff, Store, SystemClient
from app.models.base import utcnow
from app.roles import PERSONAL_DATA_CLIENT_ROLES, STORE_ROLES, Role
from app.uow import UnitOfWork


def _record(
    uow: UnitOfWork,
    principal: Principal,
    resource: str,
    changed_fields: Sequence[str] | None = None,
) -> None:
    uow.record(
        EventDraft(
            actor=principal.actor,
            action=Action.ADMIN,
            resource=resource,
            changed_fields=tuple(changed_fields) if changed_fields is not None else None,
        )
    )


async def _page(
    uow: UnitOfWork,
    model: type[Listed],
    request: PageRequest,
    where: Sequence[ColumnElement[bool]] = (),
) -> tuple[list[Listed], str | None]:
    """One page of rows, newest first, and the cursor of the next page (if there is one)."""
    rows = await repository.newest_first(uow.session, model, request, where)
    return cut_page(rows, request, lambda row: Keyset(row.created_at, row.id))


# --- stores -------------------------------------------------------------------------------------


def store_out(store: Store) -> StoreOut:
    return StoreOut(
        id=store.id,
        code=store.code,
        name=store.name,
        opening_hours=OpeningHours(open=store.opens_at, close=store.closes_at),
        created_at=store.created_at,
    )


async def create_store(uow: UnitOfWork, principal: Principal, body: StoreCreate) -> StoreOut:
    await uow.verify_principal()
    duplicate = Conflict("A store with this code already exists.")
    if await repository.store_code_taken(uow.session, body.code):
        raise duplicate
    store = Store(
        code=body.code,
        name=body.name,
        opens_at=body.opening_hours.open,
        closes_at=body.opening_hours.close,
    )
    try:
        await repository.add(uow.session, store)
    except DuplicateKey as exc:
        raise duplicate from exc
    _record(uow, principal, f"stores/{store.id}")
    return store_out(store)


async def list_stores(uow: UnitOfWork, principal: Principal, request: PageRequest) -> StoreList:
    await uow.verify_principal()
    _record(uow, principal, "stores")
    rows, next_cursor = await _page(uow, Store, request)
    return StoreList(items=[store_out(row) for row in rows], next=next_cursor)


# --- staff --------------------------------------------------------------------------------------

# In ``changed_fields``, the mark of a change that waits for an auditor (the `privileged_change`
# alert looks for it); an approval is recorded on ``…/approve`` with the same mark.
PENDING = "pending_approval"


def staff_out(staff: Staff) -> StaffOut:
    return StaffOut(
        id=staff.id,
        login=staff.login,
        display_name=staff.display_name,
        role=Role(staff.role),
        store=staff.store.code if staff.store else None,
        active=staff.active,
        pending_approval=staff.pending_approval,
        created_at=staff.created_at,
        updated_at=staff.updated_at,
    )


async def _store_for(uow: UnitOfWork, role: Role, code: str | None) -> Store | None:
    """The store a member of ``role`` belongs to: exactly one for store roles, none otherwise."""
    if role not in STORE_ROLES:
        if code is not None:
            raise ValidationFailed("Auditors and admins belong to no store: send store as null.")
        return None
    if code is None:
        raise ValidationFailed("Sales, technician and manager staff need a store code.")
    store = await repository.store_by_code(uow.session, code)
    if store is None:
        raise ValidationFailed("No store has this code.")
    return store


async def _temporary_password_hash(password: str, login: str) -> str:
    """A password an admin sets. Hashed before the request's transaction begins, so that Argon2
    never runs while the request holds a database lock."""
    check_password_policy(password, login)
    return await hash_password_async(password)


async def create_staff(uow: UnitOfWork, principal: Principal, body: StaffCreate) -> StaffOut:
    """A new member waits for an auditor's approval, with a temporary password."""
    password_hash = await _temporary_password_hash(body.password, body.login)
    await uow.verify_principal()
    store = await _store_for(uow, Role(body.role), body.store)
    duplicate = Conflict("A staff member with this login already exists.")
    if await repository.staff_login_taken(uow.session, body.login):
        raise duplicate
    now = utcnow()
    staff = Staff(
        login=body.login,
        display_name=body.display_name,
        role=Role(body.role).value,
        store=store,
        password_hash=password_hash,
        password_expires_at=now + TEMPORARY_PASSWORD_LIFETIME,
        active=body.active,
        pending_approval=True,
        auth_epoch=0,
        created_at=now,
        updated_at=now,
    )
    try:
        await repository.add(uow.session, staff)
    except DuplicateKey as exc:
        raise duplicate from exc
    _record(uow, principal, f"staff/{staff.id}", [PENDING])
    return staff_out(staff)


async def list_staff(
    uow: UnitOfWork, principal: Principal, request: PageRequest, pending: bool | None = None
) -> StaffList:
    await uow.verify_principal()
    _record(uow, principal, "staff")
    rows, next_cursor = await _page(uow, Staff, request, repository.pending_is(Staff, pending))
    return StaffList(items=[staff_out(row) for row in rows], next=next_cursor)


def _refuse_self_lockout(principal: Principal, staff: Staff, patch: StaffPatch) -> None:
    if principal.kind != "staff" or principal.subject != staff.id:
        return
    if patch.active is False or (patch.role is not None and patch.role != Role.ADMIN):
        raise Conflict("You may not deactivate yourself or remove your own admin role.")


async def update_staff(
    uow: UnitOfWork, principal: Principal, staff_id: str, patch: StaffPatch
) -> StaffOut:
    password_hash = None
    if patch.password is not None:
        if principal.subject == staff_id:
            raise Conflict("Change your own password with POST /auth/password.")
        # The policy needs the login: checked again below, once the member is loaded.
        password_hash = await hash_password_async(patch.password)
    await uow.verify_principal()
    staff = await repository.staff_by_id(uow.session, staff_id)
    if staff is None:
        raise NotFound()
    _refuse_self_lockout(principal, staff, patch)
    if patch.password is not None:
        check_password_policy(patch.password, staff.login)
    sent = patch.model_fields_set
    role = Role(patch.role) if patch.role is not None else Role(staff.role)
    current_code = staff.store.code if staff.store else None
    code = patch.store if "store" in sent else current_code
    store = await _store_for(uow, role, code) if {"role", "store"} & sent else staff.store

    now = utcnow()
    changed: list[str] = []
    if patch.display_name is not None and patch.display_name != staff.display_name:
        staff.display_name = patch.display_name
        changed.append("display_name")
    if role.value != staff.role:
        staff.role = role.value
        changed.append("role")
    if code != current_code:
        staff.store = store
        changed.append("store")
    if password_hash is not None:
        staff.password_hash = password_hash
        staff.password_expires_at = now + TEMPORARY_PASSWORD_LIFETIME
        changed.append("password")
    if patch.active is not None and patch.active != staff.active:
        staff.active = patch.active
        changed.append("active")

    # A way to customer data, given by an admin, waits for an auditor.
    needs_approval = bool({"role", "store", "password"} & set(changed)) or (
        "active" in changed and staff.active
    )
    if needs_approval:
        staff.pending_approval = True
        changed.append(PENDING)
    # What the person may do has changed: every token they hold must stop working.
    if needs_approval or "active" in changed:
        repository.end_tokens(staff)
    if changed:
        staff.updated_at = now
    _record(uow, principal, f"staff/{staff.id}", changed)
    return staff_out(staff)


async def approve_staff(uow: UnitOfWork, principal: Principal, staff_id: str) -> StaffOut:
    """An auditor makes a pending change effective; never on their own account."""
    await uow.verify_principal()
    resource = f"staff/{staff_id}/approve"
    if principal.subject == staff_id:
        raise OwnAccountApproval(
            audit_event=denied_event(
                principal.actor, Action.ADMIN, resource, OwnAccountApproval.slug
            )
        )
    staff = await repository.approve(uow.session, Staff, staff_id, utcnow())
    if staff is None:
        if await repository.staff_by_id(uow.session, staff_id) is None:
            raise NotFound()
        raise Conflict("Nothing to approve: the account is not pending approval.")
    _record(uow, principal, resource, [PENDING])
    return staff_out(staff)


# --- system clients -----------------------------------------------------------------------------


def client_out(client: SystemClient) -> ClientOut:
    return ClientOut(
        id=client.id,
        name=client.name,
        client_id=client.name,
        role=Role(client.role),
        active=client.active,
        pending_approval=client.pending_approval,
        created_at=client.created_at,
        updated_at=client.updated_at,
    )


def _with_secret(client: SystemClient, secret: str) -> ClientWithSecret:
    return ClientWithSecret(**client_out(client).model_dump(), client_secret=secret)


def _awaits_approval(role: str) -> bool:
    # Every client role reads personal data today; a role that did not would need no approval.
    return Role(role) in PERSONAL_DATA_CLIENT_ROLES


async def create_client(
    uow: UnitOfWork, principal: Principal, body: ClientCreate
) -> ClientWithSecret:
    await uow.verify_principal()
    duplicate = Conflict("A system client with this name already exists.")
    if await repository.client_name_taken(uow.session, body.name):
        raise duplicate
    secret = new_client_secret()
    now = utcnow()
    client = SystemClient(
        name=body.name,
        role=Role(body.role).value,
        secret_hash=hash_client_secret(secret),
        active=body.active,
        pending_approval=_awaits_approval(body.role),
        auth_epoch=0,
        created_at=now,
        updated_at=now,
    )
    try:
        await repository.add(uow.session, client)
    except DuplicateKey as exc:
        raise duplicate from exc
    _record(uow, principal, f"clients/{client.id}", [PENDING] if client.pending_approval else None)
    return _with_secret(client, secret)


async def list_clients(
    uow: UnitOfWork, principal: Principal, request: PageRequest, pending: bool | None = None
) -> ClientList:
    await uow.verify_principal()
    _record(uow, principal, "clients")
    where = repository.pending_is(SystemClient, pending)
    rows, next_cursor = await _page(uow, SystemClient, request, where)
    return ClientList(items=[client_out(row) for row in rows], next=next_cursor)


async def _existing_client(uow: UnitOfWork, client_id: str) -> SystemClient:
    client = await repository.client_by_id(uow.session, client_id)
    if client is None:
        raise NotFound()
    return client


async def update_client(
    uow: UnitOfWork, principal: Principal, client_id: str, patch: ClientPatch
) -> ClientOut:
    await uow.verify_principal()
    client = await _existing_client(uow, client_id)
    changed: list[str] = []
    if patch.role is not None and Role(patch.role).value != client.role:
        client.role = Role(patch.role).value
        changed.append("role")
    if patch.active is not None and patch.active != client.active:
        client.active = patch.active
        changed.append("active")
    needs_approval = ("role" in changed or ("active" in changed and client.active)) and (
        _awaits_approval(client.role)
    )
    if needs_approval:
        client.pending_approval = True
        changed.append(PENDING)
    if "role" in changed or "active" in changed:
        repository.end_tokens(client)
    if changed:
        client.updated_at = utcnow()
    _record(uow, principal, f"clients/{client.id}", changed)
    return client_out(client)


async def rotate_client_secret(
    uow: UnitOfWork, principal: Principal, client_id: str
) -> ClientWithSecret:
    await uow.verify_principal()
    client = await _existing_client(uow, client_id)
    secret = new_client_secret()
    client.secret_hash = hash_client_secret(secret)
    changed = ["client_secret"]
    if _awaits_approval(client.role):
        client.pending_approval = True
        changed.append(PENDING)
    repository.end_tokens(client)
    client.updated_at = utcnow()
    _record(uow, principal, f"clients/{client.id}/secret", changed)
    return _with_secret(client, secret)


async def approve_client(uow: UnitOfWork, principal: Principal, client_id: str) -> ClientOut:
    """An auditor makes a pending change of a system client effective."""
    await uow.verify_principal()
    client = await repository.approve(uow.session, SystemClient, client_id, utcnow())
    if client is None:
        await _existing_client(uow, client_id)
        raise Conflict("Nothing to approve: the client is not pending approval.")
    _record(uow, principal, f"clients/{client_id}/approve", [PENDING])
    return client_out(client)
