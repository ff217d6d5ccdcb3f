"""Customer records: register, disclose, correct and search (promises 1, 2, 3 and 5).

Every function goes through the access pipeline (``app/access/pipeline.py``): the policy row,
one query for caller, visit and customer, existence and state, decryption of only the disclosed
groups, and the access event — committed by the unit of work with any change, before the answer
leaves.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy.orm import InstrumentedAttribute

from app import shredding
from app.access.context import AccessContext
from app.access.guard import denied, permit
from app.access.pipeline import (
    OpenedCustomer,
    admit_registration,
    open_customer,
    record_access,
)
from app.audit.events import Action, EventDraft, denied_event
from app.blind_index import IndexedField, kana_birth_term
from app.crypto import FieldCipher, KeyScope
from app.customers import repository
from app.customers.catalogue import (
    CATALOGUE,
    CONTRACT_GROUPS,
    CORRECTABLE,
    CORRECTABLE_COLUMNS,
    VISIT_GROUPS,
    CustomerReader,
    seal_customer_field,
)
from app.customers.disclosure import build_view
from app.customers.schemas import (
    CustomerCreate,
    CustomerPatch,
    CustomerView,
    SearchMatch,
    SearchRequest,
    SearchResult,
)
from app.errors import Conflict, PurposeNotAllowed, RateLimited, ValidationFailed
from app.kit.idempotency import idempotent_call
from app.kit.ids import resource_of
from app.models import ConsentEvent, Customer
from app.models.base import new_id, utcnow
from app.policy import PURPOSES_WHILE_SUSPENDED, FieldGroup
from app.presence import repository as presence_repository
from app.presence.proofs import PresenceMethod, new_salt, weak_pin_reason
from app.presence.service import PresenceRequired
from app.retention.service import recompute_form_retention
from app.runtime import Runtime
from app.uow import UnitOfWork
from app.validation.email import normalise_email
from app.validation.kana import kana_index_form
from app.validation.names import display_name
from app.vault import CustomerCiphers
from app.visits import service as visits_service

SEARCH_LIMIT = 5
CHANNELS = ("email", "sms")


async def _view(uow: UnitOfWork, runtime: Runtime, opened: OpenedCustomer) -> CustomerView:
    """The record as the policy discloses it, with the rows its groups need."""
    groups = opened.groups
    contracts = opened.contracts
    if contracts is None:
        contracts = (
            await repository.contracts_of(uow.session, opened.id)
            if groups & CONTRACT_GROUPS
            else ()
        )
    visits = await repository.visits_of(uow.session, opened.id) if groups & VISIT_GROUPS else ()
    visit_cipher: FieldCipher | None = None
    if FieldGroup.REPAIRS in groups and any(v.type == "repair" for v, _ in visits):
        visit_cipher = await visits_service.notes_cipher(uow, runtime)
    return build_view(
        opened.reader,
        groups,
        verified_store=opened.verified_store,
        contracts=contracts,
        visits=visits,
        visit_cipher=visit_cipher,
        now=utcnow(),
    )


async def disclose_customer(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str
) -> CustomerView:
    opened = await open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.READ,
        resource=resource_of("customers", customer_id),
        with_contracts=True,
        changes_nothing=True,
    )
    view = await _view(uow, runtime, opened)
    record_access(uow, ctx, opened, action=Action.READ, resource=f"customers/{opened.id}")
    return view


def _blind_indexes(
    runtime: Runtime, *, phone: str, email: str | None, kana: str, birth: date
) -> dict[str, str | None]:
    index = runtime.blind_index
    return {
        "phone_bidx": index.digest(IndexedField.PHONE, phone),
        "email_bidx": index.digest(IndexedField.EMAIL, normalise_email(email)[1])
        if email
        else None,
        "kana_birth_bidx": index.digest(
            IndexedField.KANA_BIRTH, kana_birth_term(kana_index_form(kana), birth)
        ),
    }


async def add_customer(
    uow: UnitOfWork,
    runtime: Runtime,
    body: CustomerCreate,
    *,
    store_id: str | None,
    visit_id: str,
    recorded_by: str,
    now: datetime,
) -> tuple[Customer, CustomerCiphers]:
    """The customer's rows: encrypted fields, blind indexes, data keys and consent history.

    No access rule is checked here: the caller has (or is the demo)."""
    customer_id = new_id()
    shred_version = await shredding.current_version(uow.session, customer_id)
    ciphers, key_rows = runtime.vault.new_customer_keys(customer_id, shred_version)
    document_number = body.identity_document.number  # normalised per type by the schema

    def seal(column: str, value: str) -> bytes:
        return seal_customer_field(ciphers, customer_id, column, value)

    salt = new_salt()
    proofs = runtime.proof_keys
    customer = Customer(
        id=customer_id,
        state="active",
        proof_salt=salt,
        pin_hash=proofs.pin_hash(salt, customer_id, body.pin),
        document_hash=proofs.document_hash(salt, customer_id, document_number)
        if document_number
        else None,
        created_store_id=store_id,
        name_enc=seal("name", body.name),
        name_kana_enc=seal("name_kana", body.name_kana),
        date_of_birth_enc=seal("date_of_birth", body.date_of_birth.isoformat()),
        postal_code_enc=seal("postal_code", body.postal_code),
        address_enc=seal("address", body.address),
        document_type=body.identity_document.type.value,
        document_number_enc=seal("document_number", document_number) if document_number else None,
        document_verified_at=now,
        document_verified_store_id=store_id,
        phone_enc=seal("phone", body.phone),
        email_enc=seal("email", body.email) if body.email else None,
        marketing_email=body.consents.marketing_email,
        marketing_sms=body.consents.marketing_sms,
        created_at=now,
        updated_at=now,
        **_blind_indexes(
            runtime,
            phone=body.phone,
            email=body.email,
            kana=body.name_kana,
            birth=body.date_of_birth,
        ),
    )
    consents = [
        ConsentEvent(
            customer_id=customer_id,
            channel=channel,
            granted=getattr(body.consents, f"marketing_{channel}"),
            at=now,
            store_id=store_id,
            visit_id=visit_id,
            method="in_store_registration",
            recorded_by=recorded_by,
        )
        for channel in CHANNELS
    ]
    await repository.add_customer(uow.session, customer, key_rows, consents)
    return customer, ciphers


async def create_customer(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    body: CustomerCreate,
    *,
    idempotency_key: str | None,
) -> CustomerView:
    """Register a customer within an open visit at the caller's store, attaching it to the visit."""
    resource = "customers"
    justified = permit(ctx, action=Action.CREATE, resource=resource)
    call = idempotent_call(
        runtime.idempotency_key,
        caller_id=ctx.principal.subject,
        key=idempotency_key,
        route="customers",
        request={"body": body.model_dump(mode="json"), "visit": ctx.visit_id},
    )
    first = await call.first_answer(uow.session)
    if first is not None:
        return await disclose_customer(uow, runtime, ctx, first)
    visit_id = await admit_registration(uow, ctx, action=Action.CREATE, resource=resource)
    customer, ciphers = await add_customer(
        uow,
        runtime,
        body,
        store_id=ctx.principal.store_id,
        visit_id=visit_id,
        recorded_by=ctx.principal.login,
        now=utcnow(),
    )
    registered = PresenceMethod.REGISTERED.value  # present by definition
    if not await repository.attach_to_open_visit(uow.session, visit_id, customer.id, registered):
        raise Conflict("The visit already has a customer.")
    await call.remember(uow.session, customer.id)
    opened = OpenedCustomer(
        customer,
        CustomerReader(customer, ciphers),
        justified,
        ctx.principal.store_code,
        contracts=(),
    )
    view = await _view(uow, runtime, opened)
    record_access(
        uow,
        ctx,
        opened,
        action=Action.CREATE,
        resource=f"customers/{customer.id}",
        presence_method=registered,
    )
    return view


async def correct_customer(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str, patch: CustomerPatch
) -> CustomerView:
    resource = resource_of("customers", customer_id)
    opened = await open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.UPDATE,
        resource=resource,
        scopes=frozenset(KeyScope),
        with_contracts=True,
    )
    sent = patch.model_fields_set - {"pin"}
    if any(
        CORRECTABLE[name] not in opened.groups
        or ctx.purpose not in CATALOGUE[CORRECTABLE[name]].correctable_for
        for name in sent
    ):
        raise denied(
            ctx,
            PurposeNotAllowed,
            action=Action.UPDATE,
            resource=resource,
            customer_ids=(opened.id,),
            detail="This purpose does not cover the fields you tried to correct.",
        )
    customer, reader = opened.customer, opened.reader
    changed: list[str] = []
    if patch.pin is not None:
        await _change_pin(uow, runtime, ctx, opened, patch.pin, resource)
        changed.append("pin")
    for column in CORRECTABLE_COLUMNS:
        if column.name not in sent:
            continue
        new: Any = getattr(patch, column.name)
        stored = None if new is None else column.encode(new)
        if stored != reader.field(column.name):
            setattr(
                customer,
                f"{column.name}_enc",
                None
                if stored is None
                else seal_customer_field(reader.ciphers, customer.id, column.name, stored),
            )
            changed.append(column.name)
    if patch.consents is not None:
        for channel in CHANNELS:
            wanted = getattr(patch.consents, f"marketing_{channel}")
            if wanted is None or wanted == getattr(customer, f"marketing_{channel}"):
                continue
            setattr(customer, f"marketing_{channel}", wanted)
            changed.append(f"consents.marketing_{channel}")
            repository.add_consent_event(
                uow.session,
                ConsentEvent(
                    customer_id=customer.id,
                    channel=channel,
                    granted=wanted,
                    store_id=ctx.principal.store_id,
                    visit_id=ctx.visit_id,
                    method="correction",
                    recorded_by=ctx.principal.login,
                ),
            )
    if {"phone", "email", "name_kana", "date_of_birth"} & set(changed):
        for column_name, value in _blind_indexes(
            runtime,
            phone=reader.required("phone"),
            email=reader.field("email"),
            kana=reader.required("name_kana"),
            birth=date.fromisoformat(reader.required("date_of_birth")),
        ).items():
            setattr(customer, column_name, value)
    if changed:
        customer.updated_at = utcnow()
    await repository.flush(uow.session)
    # Retention (paper forms): consent forms are kept while a consent is granted.
    if any(name.startswith("consents.") for name in changed):
        await recompute_form_retention(uow, customer.id)
    view = await _view(uow, runtime, opened)
    record_access(
        uow,
        ctx,
        opened,
        action=Action.UPDATE,
        resource=f"customers/{customer.id}",
        changed_fields=tuple(changed),
    )
    return view


async def _change_pin(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    opened: OpenedCustomer,
    pin: str,
    resource: str,
) -> None:
    """A new PIN, only within a visit where the customer proved presence (or a manager attached
    them with a reason: how a customer who forgot their PIN gets a new one) — never on a reason
    or a customer request alone."""
    proven = (
        await presence_repository.visit_presence(uow.session, ctx.visit_id)
        if opened.justified.visit_id is not None and ctx.visit_id is not None
        else None
    )
    if proven is None:
        raise denied(
            ctx,
            PresenceRequired,
            action=Action.UPDATE,
            resource=resource,
            customer_ids=(opened.id,),
            detail="A PIN is changed only within a visit where the customer proved presence.",
        )
    reader = opened.reader
    weak = weak_pin_reason(
        pin,
        date_of_birth=date.fromisoformat(reader.required("date_of_birth")),
        phone_e164=reader.required("phone"),
    )
    if weak is not None:
        raise ValidationFailed(
            extra={"errors": [{"loc": ["body", "pin"], "type": "weak_pin", "msg": weak}]}
        )
    salt = new_salt()
    await presence_repository.set_pin(
        uow.session, opened.id, salt, runtime.proof_keys.pin_hash(salt, opened.id, pin)
    )


async def search_customers(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, criteria: SearchRequest
) -> SearchResult:
    """Exact match through the blind indexes; at most five ids with masked names."""
    resource = "customers/search"
    permit(ctx, action=Action.SEARCH, resource=resource)
    await uow.verify_principal()
    await runtime.limits.consume(
        runtime.settings.search_rate_limit,
        f"search:{ctx.principal.subject}",
        audit_event=denied_event(
            ctx.actor,
            Action.SEARCH,
            resource,
            RateLimited.slug,
            purpose=ctx.purpose.value,
            reason=ctx.reason,
        ),
        kind="search",
    )
    index = runtime.blind_index
    column: InstrumentedAttribute[Any]
    if criteria.phone is not None:
        column, digest = Customer.phone_bidx, index.digest(IndexedField.PHONE, criteria.phone)
    elif criteria.email is not None:
        column = Customer.email_bidx
        digest = index.digest(IndexedField.EMAIL, normalise_email(criteria.email)[1])
    else:
        assert criteria.name_kana is not None and criteria.date_of_birth is not None
        column = Customer.kana_birth_bidx
        digest = index.digest(
            IndexedField.KANA_BIRTH,
            kana_birth_term(kana_index_form(criteria.name_kana), criteria.date_of_birth),
        )
    states = ["active", "suspended"] if ctx.purpose in PURPOSES_WHILE_SUSPENDED else ["active"]
    found = await repository.search_names(uow.session, column, digest, states, SEARCH_LIMIT)
    items = []
    for customer_id, name_enc, wrapped in found:
        ciphers = runtime.vault.open_customer(customer_id, identity=wrapped, profile=None)
        name = ciphers.for_scope(KeyScope.IDENTITY).decrypt(
            name_enc, table="customer", column="name", row_id=customer_id
        )
        items.append(SearchMatch(id=customer_id, display_name=display_name(name)))
    uow.record(
        EventDraft(
            actor=ctx.actor,
            action=Action.SEARCH,
            resource=resource,
            purpose=ctx.purpose.value,
            reason=ctx.reason,
            customer_ids=tuple(item.id for item in items),
            result_count=len(items),
        )
    )
    return SearchResult(items=items)
