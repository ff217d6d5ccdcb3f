"""Visits: the shop's own record of serving a customer. They take no purpose, are scoped to the
caller's store, and attaching a customer to one is itself an access event."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from app.access.guard import refuse_role
from app.audit.events import Action, EventDraft, denied_event
from app.auth.tokens import Principal
from app.crypto import FieldCipher
from app.errors import Conflict, NotFound, PurposeNotAllowed, ValidationFailed, VisitRequired
from app.kit.idempotency import idempotent_call
from app.kit.ids import canonical_id, resource_of
from app.kit.pagination import Keyset, PageRequest, cut_page
from app.models import RepairStatusChange, Visit
from app.models.base import new_id, utcnow
from app.policy import (
    WHILE_REPAIR_VISIT_OPEN,
    FieldGroup,
    Justification,
    Operation,
    Purpose,
    operation_allows,
    rule_for,
)
from app.presence import service as presence_service
from app.presence.repository import mark_present
from app.presence.schemas import Presence, PresenceAgain
from app.runtime import Runtime
from app.uow import UnitOfWork
from app.visits import repository
from app.visits.rules import (
    STALE_REPAIR_AFTER,
    VISIT_NOTES_KEY,
    RepairStatus,
    VisitType,
    auto_close_at,
    effective_closed_at,
    may_advance,
    presence_window,
    presence_within,
)
from app.visits.schemas import (
    RepairOut,
    RepairStep,
    VisitCreate,
    VisitList,
    VisitPatch,
    VisitView,
)

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


@dataclass(frozen=True, slots=True)
class TextRequest:
    """The optional headers of a visit route. With a purpose, the caller asks for the free text
    of visits (notes, a repair's symptom): text about a person, answered only where that
    purpose's row gives ``repairs`` and the visit itself justifies it. The reason also stands
    for a manager's attach without the customer's proof of presence."""

    purpose: Purpose | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class TextAccess:
    """The caller's admitted free-text access: the policy row, and the reason if one was given."""

    principal: Principal
    purpose: Purpose
    reason: str | None
    justification: Justification


def admit_text(principal: Principal, asked: TextRequest | None, resource: str) -> TextAccess | None:
    """``None`` when no purpose was sent; a recorded ``403`` when the row does not give
    ``repairs`` (sales never see visit notes)."""
    if asked is None or asked.purpose is None:
        return None
    rule = rule_for(principal.role, asked.purpose)
    if rule is None or FieldGroup.REPAIRS not in rule.groups:
        raise PurposeNotAllowed(
            audit_event=denied_event(
                principal.actor,
                Action.READ,
                resource,
                PurposeNotAllowed.slug,
                purpose=asked.purpose.value,
                reason=asked.reason,
            )
        )
    return TextAccess(principal, asked.purpose, asked.reason, rule.justification)


def _text_justified(
    access: TextAccess, visit: Visit, now: datetime, window: timedelta
) -> tuple[bool, bool]:
    """(may the text of this visit be answered, is the look queued for review)."""
    if visit.customer_id is not None and effective_closed_at(visit, now) is None:
        if (access.principal.role, access.purpose) in WHILE_REPAIR_VISIT_OPEN:
            if visit.type == VisitType.REPAIR:
                return True, False
        elif visit.type != VisitType.REPAIR or presence_within(visit, now, window):
            return True, False
    if access.justification is Justification.VISIT_OR_REASON and access.reason is not None:
        return True, True
    return False, False


def _disclose_texts(
    uow: UnitOfWork,
    runtime: Runtime,
    access: TextAccess | None,
    visits: Sequence[Visit],
    resource: str,
    now: datetime,
) -> set[str]:
    """The ids of the visits whose text is answered, and their read event."""
    if access is None:
        return set()
    shown: list[Visit] = []
    review = False
    for visit in visits:
        allowed, queued = _text_justified(access, visit, now, presence_window(runtime.settings))
        if allowed:
            shown.append(visit)
            review = review or queued
    if shown:
        uow.record(
            EventDraft(
                actor=access.principal.actor,
                action=Action.READ,
                resource=resource,
                purpose=access.purpose.value,
                reason=access.reason,
                customer_ids=tuple(dict.fromkeys(v.customer_id for v in shown if v.customer_id)),
                fields=(FieldGroup.REPAIRS.value,),
                review_required=review,
            )
        )
    return {v.id for v in shown}


def _store_of(principal: Principal) -> str:
    # Admitted by the route for store staff only, who belong to exactly one store.
    assert principal.store_id is not None
    return principal.store_id


def _view(
    visit: Visit,
    store_code: str,
    cipher: FieldCipher | None,
    now: datetime,
    *,
    texts: bool,
    history: Sequence[RepairStep] | None = None,
) -> VisitView:
    def text(column: str) -> str | None:
        blob: bytes | None = getattr(visit, f"{column}_enc")
        if blob is None or cipher is None:
            return None
        return cipher.decrypt(blob, table="visit", column=column, row_id=visit.id)

    closed_at = effective_closed_at(visit, now)
    # Free text is left out (not null) unless disclosed.
    repair = None
    if visit.type == VisitType.REPAIR:
        repair = RepairOut(
            device_model=visit.repair_device_model or "",
            status=RepairStatus(visit.repair_status or RepairStatus.RECEIVED),
            updated_at=visit.repair_updated_at,
            **({"symptom": text("repair_symptom") or ""} if texts else {}),
            **({"history": list(history)} if texts and history is not None else {}),
        )
    return VisitView(
        id=visit.id,
        store=store_code,
        type=VisitType(visit.type),
        status="closed" if closed_at else "open",
        customer_id=visit.customer_id,
        opened_at=visit.opened_at,
        closed_at=closed_at,
        repair=repair,
        **({"notes": text("notes")} if texts else {}),
    )


def _record_repair_step(
    uow: UnitOfWork, principal: Principal, visit: Visit, status: RepairStatus, now: datetime
) -> None:
    visit.repair_status = status.value
    visit.repair_updated_at = now
    repository.add_status_change(
        uow.session,
        RepairStatusChange(
            visit_id=visit.id, status=status.value, changed_by=principal.subject, changed_at=now
        ),
    )


async def _history(uow: UnitOfWork, visit: Visit) -> list[RepairStep]:
    return [
        RepairStep(status=RepairStatus(status), at=at, by=login)
        for status, at, login in await repository.repair_history(uow.session, visit.id)
    ]


async def _attach_customer(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    visit: Visit,
    customer_id: str,
    presence: Presence | None,
    asked: TextRequest | None,
    *,
    resource: str,
) -> None:
    """Attach an existing customer on their proof of presence (or a manager's reason)."""
    now = utcnow()
    proven = await presence_service.prove(
        uow,
        runtime,
        principal,
        customer_id,
        presence,
        reason=asked.reason if asked else None,
        resource=resource,
        now=now,
    )
    visit.customer_id = customer_id
    mark_present(visit, proven.method.value, now)
    uow.record(
        EventDraft(
            actor=principal.actor,
            action=Action.ATTACH,
            resource=f"visits/{visit.id}",
            reason=proven.reason,
            customer_ids=(customer_id,),
            review_required=proven.review_required,
            presence_method=proven.method.value,
        )
    )


async def open_visit(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    body: VisitCreate,
    *,
    idempotency_key: str | None,
    asked: TextRequest | None = None,
) -> VisitView:
    store_id = _store_of(principal)
    access = admit_text(principal, asked, "visits")
    await uow.verify_principal()
    call = idempotent_call(
        runtime.idempotency_key,
        caller_id=principal.subject,
        key=idempotency_key,
        route="visits",
        request=body.model_dump(mode="json"),
    )
    first = await call.first_answer(uow.session)
    if first is not None:
        return await get_visit(uow, runtime, principal, first, asked=asked, refuse=False)
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
    if body.customer_id is not None:
        await _attach_customer(
            uow,
            runtime,
            principal,
            visit,
            body.customer_id,
            body.presence,
            asked,
            resource="visits",
        )
    await repository.add(uow.session, visit)
    if body.repair is not None:
        # The history's first step; the visit row exists now for it to point at.
        _record_repair_step(uow, principal, visit, RepairStatus.RECEIVED, now)
    await call.remember(uow.session, visit_id)
    texts = _disclose_texts(uow, runtime, access, [visit], f"visits/{visit_id}", now)
    return _view(visit, principal.store_code or "", cipher, now, texts=visit.id in texts)


async def _load(
    uow: UnitOfWork, principal: Principal, visit_id: str, *, lock: bool
) -> tuple[Visit, str]:
    store_id = _store_of(principal)
    await uow.verify_principal()
    vid = canonical_id(visit_id)
    found = await repository.in_store(uow.session, vid, store_id, lock=lock) if vid else None
    if found is None:
        raise NotFound("No such visit at your store.")
    return found


async def get_visit(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    visit_id: str,
    *,
    asked: TextRequest | None = None,
    refuse: bool = True,
) -> VisitView:
    """One visit of the caller's store. With a purpose header whose row gives ``repairs``, its
    free text too — refused (``refuse``) when this visit does not justify it."""
    resource = resource_of("visits", visit_id)
    access = admit_text(principal, asked, resource)
    visit, code = await _load(uow, principal, visit_id, lock=False)
    now = utcnow()
    texts = _disclose_texts(uow, runtime, access, [visit], f"visits/{visit.id}", now)
    if access is not None and not texts and refuse:
        raise VisitRequired(
            "This visit does not justify reading its notes: it must be open, have its customer "
            "attached (a repair visit, for a technician), or a manager must give a reason.",
            audit_event=denied_event(
                principal.actor,
                Action.READ,
                f"visits/{visit.id}",
                VisitRequired.slug,
                purpose=access.purpose.value,
                reason=access.reason,
                customer_ids=(visit.customer_id,) if visit.customer_id else (),
            ),
        )
    shown = visit.id in texts
    history = await _history(uow, visit) if shown and visit.type == VisitType.REPAIR else None
    cipher = await notes_cipher(uow, runtime)
    return _view(visit, code, cipher, now, texts=shown, history=history)


async def list_visits(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    page: PageRequest,
    *,
    stale: bool = False,
    asked: TextRequest | None = None,
    now: datetime | None = None,
) -> VisitList:
    """The store's open visits; ``stale``: its repairs open for more than 30 days without a
    status change (managers only: anyone else gets a recorded ``403``)."""
    store_id = _store_of(principal)
    if stale and operation_allows(principal.role, None, Operation.LIST_STALE_REPAIRS) is None:
        raise refuse_role(principal, action=Action.READ, resource="visits")
    access = admit_text(principal, asked, "visits")
    await uow.verify_principal()
    now = now or utcnow()
    await repository.close_expired(uow.session, store_id, now)
    if stale:
        rows = await repository.stale_repairs_in_store(
            uow.session, store_id, now - STALE_REPAIR_AFTER, page
        )
    else:
        rows = await repository.open_in_store(uow.session, store_id, now, page)
    shown, next_cursor = cut_page(rows, page, lambda row: Keyset(row[0].opened_at, row[0].id))
    texts = _disclose_texts(uow, runtime, access, [v for v, _ in shown], "visits", now)
    cipher = await notes_cipher(uow, runtime)
    return VisitList(
        items=[_view(v, code, cipher, now, texts=v.id in texts) for v, code in shown],
        next=next_cursor,
    )


async def update_visit(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    visit_id: str,
    patch: VisitPatch,
    *,
    asked: TextRequest | None = None,
) -> VisitView:
    access = admit_text(principal, asked, resource_of("visits", visit_id))
    visit, code = await _load(uow, principal, visit_id, lock=True)
    now = utcnow()
    cipher = await notes_cipher(uow, runtime)
    if effective_closed_at(visit, now) is not None:
        raise Conflict("The visit is closed.")
    if "customer_id" in patch.model_fields_set:
        if visit.customer_id is not None:
            raise Conflict("A customer is already attached to this visit.")
        if patch.customer_id is None:
            raise ValidationFailed("customer_id may not be null.")
        await _attach_customer(
            uow,
            runtime,
            principal,
            visit,
            patch.customer_id,
            patch.presence,
            asked,
            resource=f"visits/{visit.id}",
        )
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
        _record_repair_step(uow, principal, visit, patch.repair.status, now)
        if patch.repair.status is RepairStatus.RETURNED:
            visit.closed_at = now
    await repository.flush(uow.session)
    texts = _disclose_texts(uow, runtime, access, [visit], f"visits/{visit.id}", now)
    return _view(visit, code, cipher, now, texts=visit.id in texts)


async def prove_presence_again(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    visit_id: str,
    body: PresenceAgain,
    *,
    asked: TextRequest | None = None,
) -> VisitView:
    """The visit's customer proves presence again (back at the counter): the visit justifies
    access again for VISIT_AUTO_CLOSE_HOURS."""
    visit, code = await _load(uow, principal, visit_id, lock=True)
    now = utcnow()
    if effective_closed_at(visit, now) is not None:
        raise Conflict("The visit is closed.")
    if visit.customer_id is None:
        raise Conflict("No customer is attached to this visit.")
    await _attach_customer(
        uow,
        runtime,
        principal,
        visit,
        visit.customer_id,
        body.presence,
        asked,
        resource=f"visits/{visit.id}/presence",
    )
    await repository.flush(uow.session)
    return _view(visit, code, None, now, texts=False)


async def close_visit(
    uow: UnitOfWork, runtime: Runtime, principal: Principal, visit_id: str
) -> VisitView:
    visit, code = await _load(uow, principal, visit_id, lock=True)
    now = utcnow()
    if effective_closed_at(visit, now) is not None:
        raise Conflict("The visit is already closed.")
    if not await repository.close(uow.session, visit.id, now):
        raise Conflict("The visit is already closed.")
    visit.closed_at = now
    return _view(visit, code, None, now, texts=False)
