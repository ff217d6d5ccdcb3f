"""The customer's rights (APPI): export (disclosure), suspension and resumption of use, and
erasure on request. Each goes through the access pipeline like any access: a manager with a
reason (reviewed) or an open customer request of the kind it needs."""

from __future__ import annotations

from datetime import datetime

from app.access.context import AccessContext
from app.access.pipeline import OpenedCustomer, open_customer, record_access
from app.audit.events import Action
from app.audit.report import build_report
from app.audit.schemas import AccessReportItem
from app.crypto import FieldCipher, KeyScope
from app.customers import repository as customers_repository
from app.customers.disclosure import billing_out, build_view, decrypt_visit_text
from app.errors import Conflict, NotFound
from app.kit.ids import resource_of
from app.models import Message
from app.models.base import utcnow
from app.policy import EXPORT_GROUPS, FieldGroup
from app.rights import erasure, repository
from app.rights.schemas import (
    CustomerExport,
    Erasure,
    ExportConsentChange,
    ExportConsents,
    ExportContract,
    ExportDevice,
    ExportDocument,
    ExportMessage,
    ExportRepair,
    ExportRepairStep,
    ExportVisit,
    UseState,
)
from app.runtime import Runtime
from app.uow import UnitOfWork
from app.validation.phone import format_national
from app.visits import repository as visits_repository
from app.visits import service as visits_service
from app.visits.rules import effective_closed_at


class AlreadySuspended(Conflict):
    slug, title = "already-suspended", "Use already suspended"
    default_detail = "The use of this customer's data is suspended already."


class NotSuspended(Conflict):
    slug, title = "not-suspended", "Use not suspended"
    default_detail = "The use of this customer's data is not suspended."


class ContractActive(Conflict):
    slug, title = "contract-active", "A contract is still active"
    default_detail = (
        "The customer has an active contract: it must be terminated before the erasure "
        "(the identity-verification record is kept while a contract runs)."
    )


# --- export -------------------------------------------------------------------------------------


def _message_text(cipher: FieldCipher | None, message: Message, column: str) -> str | None:
    blob: bytes | None = getattr(message, f"{column}_enc")
    if blob is None or cipher is None:
        return None
    return cipher.decrypt(blob, table="message", column=column, row_id=message.id)


async def export_customer(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str,
    *,
    now: datetime | None = None,
) -> CustomerExport:
    """Everything held on the customer, as one document (the full document number included:
    this is the customer's own copy)."""
    opened = await open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.EXPORT,
        resource=resource_of("customers", customer_id, "/export"),
        scopes=frozenset(KeyScope),
        with_contracts=True,
    )
    now = now or utcnow()
    export = await _export(uow, runtime, opened, now)
    record_access(
        uow,
        ctx,
        opened,
        action=Action.EXPORT,
        resource=f"customers/{opened.id}/export",
        fields=EXPORT_GROUPS,
    )
    return export


async def _export(
    uow: UnitOfWork, runtime: Runtime, opened: OpenedCustomer, now: datetime
) -> CustomerExport:
    session, reader = uow.session, opened.reader
    contracts = opened.contracts
    if contracts is None:
        contracts = await customers_repository.contracts_of(session, opened.id)
    visits = await customers_repository.visits_of(session, opened.id)
    notes = await visits_service.notes_cipher(uow, runtime) if visits else None
    customer = build_view(
        reader,
        EXPORT_GROUPS,
        verified_store=opened.verified_store,
        contracts=contracts,
        visits=visits,
        visit_cipher=notes,
        now=now,
    )
    repairs = []
    for visit, _code in visits:
        if visit.type != "repair":
            continue
        history = await visits_repository.repair_history(session, visit.id)
        repairs.append(
            ExportRepair(
                visit_id=visit.id,
                device_model=visit.repair_device_model or "",
                symptom=decrypt_visit_text(notes, visit, "repair_symptom"),
                status=visit.repair_status or "received",
                updated_at=visit.repair_updated_at,
                # Who moved the repair on is the shop's business, not the customer's data.
                history=[ExportRepairStep(status=status, at=at) for status, at, _by in history],
            )
        )
    consents = await repository.consent_history(session, opened.id)
    messages = await repository.messages_of(session, opened.id)
    profile = reader.ciphers.profile
    report = await build_report(uow, opened.id, None)
    return CustomerExport(
        customer=customer,
        contracts=[
            ExportContract(
                id=c.id,
                line_number=format_national(reader.contract_field(c, "line_number")),
                plan=c.plan,
                status=c.status,
                started_on=c.started_on,
                ended_on=c.ended_on,
                device=ExportDevice(model=c.device_model, imei=reader.contract_field(c, "imei")),
                billing=billing_out(c),
            )
            for c in contracts
        ],
        visits=[
            ExportVisit(
                id=v.id,
                store=code,
                type=v.type,
                opened_at=v.opened_at,
                closed_at=effective_closed_at(v, now),
                notes=decrypt_visit_text(notes, v, "notes"),
            )
            for v, code in visits
        ],
        repairs=repairs,
        documents=[
            ExportDocument(
                id=form.id,
                store=code,
                form_type=form.form_type,
                registered_at=form.registered_at,
                retain_until=form.retain_until,
                disposed_at=form.disposed_at,
                disposal_method=form.disposal_method,
            )
            for form, code in await repository.forms_of(session, opened.id)
        ],
        consents=ExportConsents(
            marketing_email=opened.customer.marketing_email,
            marketing_sms=opened.customer.marketing_sms,
            history=[
                ExportConsentChange(
                    channel=event.channel,
                    granted=event.granted,
                    at=event.at,
                    store=code,
                    method=event.method,
                )
                for event, code in consents
            ],
        ),
        messages=[
            ExportMessage(
                id=m.id,
                channel=m.channel,
                template=m.template,
                category=m.category,
                status=m.status,
                created_at=m.created_at,
                sent_at=m.sent_at,
                subject=_message_text(profile, m, "subject"),
                body=_message_text(profile, m, "body"),
            )
            for m in messages
        ],
        access_report=[AccessReportItem.model_validate(i.model_dump()) for i in report.items],
        generated_at=now,
    )


# --- suspension ---------------------------------------------------------------------------------


async def change_use(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str, *, suspend: bool
) -> UseState:
    """Suspend (or resume) the use of the customer's data: while suspended, only
    ``subject_request`` and ``audit`` access, and no message but an urgent notice."""
    suffix = "/suspend" if suspend else "/resume"
    opened = await open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.UPDATE,
        resource=resource_of("customers", customer_id, suffix),
        scopes=frozenset(),  # nothing is decrypted
    )
    state = await repository.lock_state(uow.session, opened.id)
    if state is None or state == "erased":
        raise NotFound("No such customer.")
    if suspend and state == "suspended":
        raise AlreadySuspended()
    if not suspend and state != "suspended":
        raise NotSuspended()
    new_state = "suspended" if suspend else "active"
    await repository.set_state(uow.session, opened.id, new_state)
    record_access(
        uow,
        ctx,
        opened,
        action=Action.UPDATE,
        resource=f"customers/{opened.id}{suffix}",
        fields=frozenset[FieldGroup](),
        changed_fields=("state",),
    )
    return UseState(id=opened.id, state=new_state)


# --- erasure ------------------------------------------------------------------------------------


async def erase_customer(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str,
    *,
    now: datetime | None = None,
) -> Erasure:
    """Erase the customer on their request (see ``app/rights/erasure.py``)."""
    opened = await open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.DELETE,
        resource=resource_of("customers", customer_id),
        scopes=frozenset(),  # nothing is decrypted: keys are destroyed
    )
    state = await repository.lock_state(uow.session, opened.id)
    if state is None or state == "erased":
        raise NotFound("No such customer.")
    now = now or utcnow()
    try:
        erased = await erasure.erase(
            uow, runtime.vault, opened.id, rule=erasure.ON_REQUEST, now=now
        )
    except erasure.ContractStillActive:
        raise ContractActive() from None
    record_access(
        uow,
        ctx,
        opened,
        action=Action.DELETE,
        resource=f"customers/{opened.id}",
        fields=erased.groups,
    )
    return Erasure(
        id=opened.id,
        state="erased",
        erased_at=now,
        identity_retained_until=erased.identity_until,
    )
