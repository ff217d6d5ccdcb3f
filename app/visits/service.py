"""Visits: the shop's own record of serving a customer. They take no purpose, are scoped to the
caller's store, and attaching a customer to one is itself an access event."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from app import idempotency
from app.audit.events import Action, EventDraft, Outcome
from app.auth.tokens import Principal
from app.crypto import FieldCipher
from app.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.models import Visit
from app.models.base import new_id, utcnow
from app.roles import STORE_ROLES
from app.runtime import Runtime
from app.uow import UnitOfWork
from app.visits import repository
from app.visits.rules import (
    VISIT_NOTES_KEY,
    RepairStatus,
    VisitType,
    auto_close_at,
    effective_closed_at,
    may_advance,
)
from app.visits.schemas import RepairOut, VisitCreate, VisitList, VisitPatch, VisitView

log = logging.getLogger(__name__)


async def notes_cipher(uow: UnitOfWork, runtime: Runtime) -> FieldCipher:
    """The service key for visit notes and repair symptoms."""
    cached = runtime.vault.cached_service_cipher(VISIT_NOTES_KEY)
    if cached is not None:
        return cached
    row = await repository.service_key(uow.session, VISIT_NOTES_KEY)
    if row is None:
        # Created inside this transaction: usable now, cached only once read back committed.
        _cipher, new_row = runtime.vault.new_service_key(VISIT_NOTES_KEY)
        await repository.add_service_key_if_absent(uow.session, new_row)
        row = await repository.service_key(uow.session, VISIT_NOTES_KEY)
        assert row is not None
        return runtime.vault.open_service_key(row)
    cipher = runtime.vault.open_service_key(row)
    runtime.vault.cache_service_cipher(VISIT_NOTES_KEY, cipher)
    return cipher


async def ensure_service_keys(runtime: Runtime) -> None:
    """Create (and commit) the service keys at start-up, so requests can cache them.

    A database that is not reachable or not migrated yet is left alone: ``/readyz`` says so,
    and requests create the key in their own transaction."""
    try:
        async with runtime.sessions() as session:
            if await repository.service_key(session, VISIT_NOTES_KEY) is None:
                _cipher, row = runtime.vault.new_service_key(VISIT_NOTES_KEY)
                await repository.add_service_key_if_absent(session, row)
                await session.commit()
    except SQLAlchemyError:
        log.warning("service keys not ensured at start-up", extra={"event": "startup"})


def _require_store_staff(principal: Principal, resource: str, action: Action) -> str:
    if principal.role not in STORE_ROLES or principal.store_id is None:
        raise Forbidden(
            "Only store staff work with visits.",
            audit_event=EventDraft(
                actor=principal.actor,
                action=action,
                resource=resource,
                outcome=Outcome.DENIED,
                denial=Forbidden.slug,
            ),
        )
    return principal.store_id


def _canonical(visit_id: str) -> str | None:
    try:
        return str(uuid.UUID(visit_id))
    except ValueError:
        return None


def _view(visit: Visit, store_code: str, cipher: FieldCipher | None, now: datetime) -> VisitView:
    def text(column: str) -> str | None:
        blob: bytes | None = getattr(visit, f"{column}_enc")
        if blob is None or cipher is None:
            return None
        return cipher.decrypt(blob, table="visit", column=column, row_id=visit.id)

    closed_at = effective_closed_at(visit, now)
    repair = None
    if visit.type == VisitType.REPAIR:
        repair = RepairOut(
            device_model=visit.repair_device_model or "",
            symptom=text("repair_symptom") or "",
            status=RepairStatus(visit.repair_status or RepairStatus.RECEIVED),
            updated_at=visit.repair_updated_at,
        )
    return VisitView(
        id=visit.id,
        store=store_code,
        type=VisitType(visit.type),
        status="closed" if closed_at else "open",
        customer_id=visit.customer_id,
        opened_at=visit.opened_at,
        closed_at=closed_at,
        notes=text("notes"),
        repair=repair,
    )


async def _attach_customer(
    uow: UnitOfWork, principal: Principal, visit: Visit, customer_id: str
) -> None:
    cid = _canonical(customer_id)
    state = await repository.customer_state(uow.session, cid) if cid else None
    if cid is None or state is None or state == "erased":
        raise NotFound("No such customer.")
    visit.customer_id = cid
    uow.record(
        EventDraft(
            actor=principal.actor,
            action=Action.ATTACH,
            resource=f"visits/{visit.id}",
            customer_ids=(cid,),
        )
    )


async def open_visit(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    body: VisitCreate,
    *,
    idempotency_key: str | None,
) -> VisitView:
    store_id = _require_store_staff(principal, "visits", Action.CREATE)
    await uow.verify_principal()
    print_ = idempotency.fingerprint(runtime.chain_key, "visits", body.model_dump(mode="json"))
    if idempotency_key is not None:
        first = await idempotency.replayed_resource(
            uow.session,
            caller_id=principal.subject,
            key=idempotency_key,
            route="visits",
            print_=print_,
        )
        if first is not None:
            return await get_visit(uow, runtime, principal, first)
    now = utcnow()
    cipher = await notes_cipher(uow, runtime)
    visit_id = new_id()
    visit = Visit(
        id=visit_id,
        store_id=store_id,
        type=body.type.value,
        opened_by=principal.subject,
        opened_at=now,
        auto_close_at=auto_close_at(body.type, now, runtime.settings.visit_auto_close_hours),
        notes_enc=cipher.encrypt(body.notes, table="visit", column="notes", row_id=visit_id)
        if body.notes
        else None,
    )
    if body.repair is not None:
        visit.repair_device_model = body.repair.device_model
        visit.repair_symptom_enc = cipher.encrypt(
            body.repair.symptom, table="visit", column="repair_symptom", row_id=visit_id
        )
        visit.repair_status = RepairStatus.RECEIVED.value
        visit.repair_updated_at = now
    if body.customer_id is not None:
        await _attach_customer(uow, principal, visit, body.customer_id)
    uow.session.add(visit)
    if idempotency_key is not None:
        await idempotency.remember(
            uow.session,
            caller_id=principal.subject,
            key=idempotency_key,
            route="visits",
            print_=print_,
            resource_id=visit_id,
        )
    await uow.session.flush()
    return _view(visit, principal.store_code or "", cipher, now)


async def _load(
    uow: UnitOfWork, principal: Principal, visit_id: str, *, action: Action
) -> tuple[Visit, str]:
    store_id = _require_store_staff(principal, f"visits/{visit_id}", action)
    await uow.verify_principal()
    vid = _canonical(visit_id)
    lock = action is not Action.READ
    found = await repository.in_store(uow.session, vid, store_id, lock=lock) if vid else None
    if found is None:
        raise NotFound("No such visit at your store.")
    return found


async def get_visit(
    uow: UnitOfWork, runtime: Runtime, principal: Principal, visit_id: str
) -> VisitView:
    visit, code = await _load(uow, principal, visit_id, action=Action.READ)
    return _view(visit, code, await notes_cipher(uow, runtime), utcnow())


async def list_open_visits(
    uow: UnitOfWork, runtime: Runtime, principal: Principal, *, limit: int, cursor: str | None
) -> VisitList:
    store_id = _require_store_staff(principal, "visits", Action.READ)
    await uow.verify_principal()
    now = utcnow()
    await repository.close_expired(uow.session, store_id, now)
    rows = await repository.open_in_store(
        uow.session, store_id, now, limit=limit + 1, before=_decode_cursor(cursor)
    )
    cipher = await notes_cipher(uow, runtime)
    page = rows[:limit]
    next_cursor = _encode_cursor(page[-1][0]) if len(rows) > limit else None
    return VisitList(items=[_view(v, code, cipher, now) for v, code in page], next=next_cursor)


def _encode_cursor(visit: Visit) -> str:
    raw = f"{visit.opened_at.isoformat()}|{visit.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        opened_at, visit_id = raw.split("|", 1)
        when = datetime.fromisoformat(opened_at)
        if when.tzinfo is None:  # the database layer refuses naive times (a 503, not a 422)
            raise ValueError("naive cursor time")
        return when, str(uuid.UUID(visit_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed("The cursor is not valid.") from None


async def update_visit(
    uow: UnitOfWork, runtime: Runtime, principal: Principal, visit_id: str, patch: VisitPatch
) -> VisitView:
    visit, code = await _load(uow, principal, visit_id, action=Action.UPDATE)
    now = utcnow()
    cipher = await notes_cipher(uow, runtime)
    if effective_closed_at(visit, now) is not None:
        raise Conflict("The visit is closed.")
    if "customer_id" in patch.model_fields_set:
        if visit.customer_id is not None:
            raise Conflict("A customer is already attached to this visit.")
        if patch.customer_id is None:
            raise ValidationFailed("customer_id may not be null.")
        await _attach_customer(uow, principal, visit, patch.customer_id)
    if "notes" in patch.model_fields_set:
        visit.notes_enc = (
            cipher.encrypt(patch.notes, table="visit", column="notes", row_id=visit.id)
            if patch.notes
            else None
        )
    if patch.repair is not None:
        if visit.type != VisitType.REPAIR:
            raise Conflict("Only repair visits have a repair status.")
        current = RepairStatus(visit.repair_status or RepairStatus.RECEIVED)
        if not may_advance(current, patch.repair.status):
            raise Conflict("The repair status only moves forward.")
        visit.repair_status = patch.repair.status.value
        visit.repair_updated_at = now
        if patch.repair.status is RepairStatus.RETURNED:
            visit.closed_at = now
    await uow.session.flush()
    return _view(visit, code, cipher, now)


async def close_visit(
    uow: UnitOfWork, runtime: Runtime, principal: Principal, visit_id: str
) -> VisitView:
    visit, code = await _load(uow, principal, visit_id, action=Action.UPDATE)
    now = utcnow()
    if effective_closed_at(visit, now) is not None:
        raise Conflict("The visit is already closed.")
    result = await uow.session.execute(
        update(Visit).where(Visit.id == visit.id, Visit.closed_at.is_(None)).values(closed_at=now)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("The visit is already closed.")
    visit.closed_at = now
    return _view(visit, code, await notes_cipher(uow, runtime), now)
