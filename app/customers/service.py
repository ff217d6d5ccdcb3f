"""Customer access: the rules of promises 1, 2, 3 and 5.

Each function follows the same steps: the policy row and its justification (``permit``), one
query that checks the token and the visit and loads the customer with its wrapped keys, the
existence check, decryption of only the disclosed groups, and the access event — committed by
the unit of work together with any change, before the answer leaves.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import update
from sqlalchemy.orm import InstrumentedAttribute

from app import idempotency
from app.access.context import AccessContext
from app.access.guard import Justified, denied, permit, visit_refused
from app.audit.events import Action, EventDraft
from app.blind_index import IndexedField, kana_birth_term
from app.crypto import FieldCipher, KeyScope
from app.customers import repository
from app.customers.disclosure import (
    CONTRACT_GROUPS,
    VISIT_GROUPS,
    CustomerReader,
    build_view,
    contract_out,
    device_out,
    scopes_for,
    seal_contract_field,
    seal_customer_field,
)
from app.customers.schemas import (
    BillingOut,
    ContractCreate,
    ContractPatch,
    ContractView,
    CustomerCreate,
    CustomerPatch,
    CustomerView,
    SearchMatch,
    SearchRequest,
    SearchResult,
)
from app.errors import Conflict, Forbidden, NotFound, PurposeNotAllowed, VisitRequired
from app.models import ConsentEvent, Contract, Customer, Visit
from app.models.base import new_id, utcnow
from app.policy import POLICY, PURPOSES_WHILE_SUSPENDED, FieldGroup, Purpose
from app.roles import Role
from app.runtime import Runtime
from app.uow import UnitOfWork
from app.validation.email import normalise_email
from app.validation.kana import kana_index_form
from app.validation.names import display_name
from app.vault import CustomerCiphers
from app.visits import service as visits_service

TOKYO = ZoneInfo("Asia/Tokyo")
SEARCH_LIMIT = 5
SEARCH_ROLES = frozenset({Role.SALES, Role.TECHNICIAN, Role.MANAGER, Role.FRAUD_SYSTEM})
CORRECTION_PURPOSES = frozenset({Purpose.CONTRACT, Purpose.SUPPORT, Purpose.SUBJECT_REQUEST})
MALFORMED_ID = "(malformed-id)"

# Which group each correctable field belongs to: a caller corrects only what it may see.
PATCH_FIELD_GROUP: dict[str, FieldGroup] = {
    "name": FieldGroup.NAME,
    "name_kana": FieldGroup.NAME,
    "phone": FieldGroup.CONTACT,
    "email": FieldGroup.CONTACT,
    "postal_code": FieldGroup.ADDRESS,
    "address": FieldGroup.ADDRESS,
    "date_of_birth": FieldGroup.BIRTH_DATE,
    "consents": FieldGroup.CONSENTS,
}


class CustomerSuspended(Forbidden):
    slug, title = "customer-suspended", "Use of this customer's data is suspended"
    default_detail = "The customer asked to suspend the use of their data."


def today_in_japan() -> date:
    return datetime.now(TOKYO).date()


def canonical_id(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def resource_of(collection: str, raw_id: str, suffix: str = "") -> str:
    """An event's resource names the canonical id asked for. A malformed id is caller input of
    any length and content (a phone number typed into the URL): it is not copied into the log."""
    return f"{collection}/{canonical_id(raw_id) or MALFORMED_ID}{suffix}"


@dataclass(frozen=True, slots=True)
class Access:
    customer: Customer
    reader: CustomerReader
    justified: Justified
    verified_store: str | None
    contracts: Sequence[Contract] | None = None  # None: not loaded


async def _authorize(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str,
    *,
    action: Action,
    resource: str,
    purposes: frozenset[Purpose] | None = None,
    requires: frozenset[FieldGroup] = frozenset(),
    scopes: frozenset[KeyScope] | None = None,
    with_contracts: bool = False,
) -> Access:
    cid = canonical_id(customer_id)
    asked = (cid,) if cid else ()
    justified = permit(
        ctx,
        action=action,
        resource=resource,
        customer_ids=asked,
        purposes=purposes,
        requires=requires,
    )
    visit = (
        None
        if justified.visit_id is None
        else repository.VisitCheck(
            justified.visit_id, ctx.principal.store_id, repair_only=justified.repair_visit_only
        )
    )
    row = await repository.load_for_access(
        uow.session,
        ctx.principal,
        cid or "",
        visit=visit,
        now=utcnow(),
        with_contracts=with_contracts and bool(justified.groups & CONTRACT_GROUPS),
    )
    uow.principal_verified(row.principal_ok)
    if visit is not None and not row.visit_ok:
        raise visit_refused(ctx, action=action, resource=resource, customer_ids=asked)
    customer = row.customer
    if customer is None or customer.state == "erased":
        raise NotFound("No such customer.")
    if customer.state == "suspended" and ctx.purpose not in PURPOSES_WHILE_SUSPENDED:
        raise denied(ctx, CustomerSuspended, action=action, resource=resource, customer_ids=asked)
    needed = scopes_for(justified.groups) if scopes is None else scopes
    ciphers = runtime.vault.open_customer(
        customer.id,
        identity=row.identity_key if KeyScope.IDENTITY in needed else None,
        profile=row.profile_key if KeyScope.PROFILE in needed else None,
    )
    return Access(
        customer,
        CustomerReader(customer, ciphers),
        justified,
        row.verified_store,
        contracts=row.contracts if with_contracts else None,
    )


async def _view(
    uow: UnitOfWork, runtime: Runtime, access: Access, groups: frozenset[FieldGroup]
) -> CustomerView:
    customer_id = access.customer.id
    contracts = access.contracts
    if contracts is None:
        contracts = (
            await repository.contracts_of(uow.session, customer_id)
            if groups & CONTRACT_GROUPS
            else ()
        )
    visits = await repository.visits_of(uow.session, customer_id) if groups & VISIT_GROUPS else ()
    visit_cipher: FieldCipher | None = None
    if FieldGroup.REPAIRS in groups and any(v.type == "repair" for v, _ in visits):
        visit_cipher = await visits_service.notes_cipher(uow, runtime)
    return build_view(
        access.reader,
        groups,
        verified_store=access.verified_store,
        contracts=contracts,
        visits=visits,
        visit_cipher=visit_cipher,
        now=utcnow(),
    )


def _event(
    ctx: AccessContext,
    access: Access | None,
    *,
    action: Action,
    resource: str,
    customer_ids: tuple[str, ...],
    fields: frozenset[FieldGroup] | set[FieldGroup] = frozenset(),
    changed_fields: tuple[str, ...] | None = None,
) -> EventDraft:
    return EventDraft(
        actor=ctx.actor,
        action=action,
        resource=resource,
        purpose=ctx.purpose.value,
        reason=ctx.reason,
        customer_ids=customer_ids,
        fields=tuple(sorted(fields)),
        changed_fields=changed_fields,
        review_required=access.justified.review_required if access else False,
    )


async def disclose_customer(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str
) -> CustomerView:
    resource = resource_of("customers", customer_id)
    access = await _authorize(
        uow, runtime, ctx, customer_id, action=Action.READ, resource=resource, with_contracts=True
    )
    view = await _view(uow, runtime, access, access.justified.groups)
    uow.record(
        _event(
            ctx,
            access,
            action=Action.READ,
            resource=f"customers/{access.customer.id}",
            customer_ids=(access.customer.id,),
            fields=access.justified.groups,
        )
    )
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
    ciphers, key_rows = runtime.vault.new_customer_keys(customer_id)
    document_number = body.identity_document.number  # normalised per type by the schema

    def seal(column: str, value: str) -> bytes:
        return seal_customer_field(ciphers, customer_id, column, value)

    customer = Customer(
        id=customer_id,
        state="active",
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
    uow.session.add(customer)
    await uow.session.flush()
    uow.session.add_all(key_rows)
    for channel, granted in (
        ("email", body.consents.marketing_email),
        ("sms", body.consents.marketing_sms),
    ):
        uow.session.add(
            ConsentEvent(
                customer_id=customer_id,
                channel=channel,
                granted=granted,
                at=now,
                store_id=store_id,
                visit_id=visit_id,
                method="in_store_registration",
                recorded_by=recorded_by,
            )
        )
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
    justified = permit(
        ctx, action=Action.CREATE, resource=resource, purposes=frozenset({Purpose.CONTRACT})
    )
    if justified.visit_id is None:
        raise denied(ctx, VisitRequired, action=Action.CREATE, resource=resource)
    caller = ctx.principal.subject
    print_ = idempotency.fingerprint(
        runtime.chain_key,
        "customers",
        {"body": body.model_dump(mode="json"), "visit": justified.visit_id},
    )
    if idempotency_key is not None:
        first = await idempotency.replayed_resource(
            uow.session, caller_id=caller, key=idempotency_key, route="customers", print_=print_
        )
        if first is not None:
            return await disclose_customer(uow, runtime, ctx, first)
    now = utcnow()
    row = await repository.load_for_access(
        uow.session,
        ctx.principal,
        "",
        visit=repository.VisitCheck(
            justified.visit_id, ctx.principal.store_id, for_new_customer=True
        ),
        now=now,
    )
    uow.principal_verified(row.principal_ok)
    if not row.visit_ok:
        raise visit_refused(ctx, action=Action.CREATE, resource=resource, customer_ids=())

    customer, ciphers = await add_customer(
        uow,
        runtime,
        body,
        store_id=ctx.principal.store_id,
        visit_id=justified.visit_id,
        recorded_by=ctx.principal.login,
        now=now,
    )
    customer_id = customer.id
    attached = await uow.session.execute(
        update(Visit)
        .where(Visit.id == justified.visit_id, Visit.customer_id.is_(None))
        .values(customer_id=customer_id)
    )
    if attached.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("The visit already has a customer.")
    if idempotency_key is not None:
        await idempotency.remember(
            uow.session,
            caller_id=caller,
            key=idempotency_key,
            route="customers",
            print_=print_,
            resource_id=customer_id,
        )

    access = Access(
        customer,
        CustomerReader(customer, ciphers),
        justified,
        ctx.principal.store_code,
        contracts=(),
    )
    view = await _view(uow, runtime, access, justified.groups)
    uow.record(
        _event(
            ctx,
            access,
            action=Action.CREATE,
            resource=f"customers/{customer_id}",
            customer_ids=(customer_id,),
            fields=justified.groups,
        )
    )
    return view


async def correct_customer(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str, patch: CustomerPatch
) -> CustomerView:
    resource = resource_of("customers", customer_id)
    access = await _authorize(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.UPDATE,
        resource=resource,
        purposes=CORRECTION_PURPOSES,
        scopes=frozenset(KeyScope),
        with_contracts=True,
    )
    sent = patch.model_fields_set
    if any(PATCH_FIELD_GROUP[name] not in access.justified.groups for name in sent):
        raise denied(
            ctx,
            PurposeNotAllowed,
            action=Action.UPDATE,
            resource=resource,
            customer_ids=(access.customer.id,),
            detail="This purpose does not cover the fields you tried to correct.",
        )
    customer, reader = access.customer, access.reader
    ciphers = reader.ciphers
    changed: list[str] = []
    for column in ("name", "name_kana", "postal_code", "address", "phone", "email"):
        if column not in sent:
            continue
        new = getattr(patch, column)
        if new != reader.field(column):
            setattr(
                customer,
                f"{column}_enc",
                None if new is None else seal_customer_field(ciphers, customer.id, column, new),
            )
            changed.append(column)
    if "date_of_birth" in sent and patch.date_of_birth is not None:
        new_birth = patch.date_of_birth.isoformat()
        if new_birth != reader.field("date_of_birth"):
            customer.date_of_birth_enc = seal_customer_field(
                ciphers, customer.id, "date_of_birth", new_birth
            )
            changed.append("date_of_birth")
    if patch.consents is not None:
        for channel in ("email", "sms"):
            wanted = getattr(patch.consents, f"marketing_{channel}")
            if wanted is None or wanted == getattr(customer, f"marketing_{channel}"):
                continue
            setattr(customer, f"marketing_{channel}", wanted)
            changed.append(f"consents.marketing_{channel}")
            uow.session.add(
                ConsentEvent(
                    customer_id=customer.id,
                    channel=channel,
                    granted=wanted,
                    store_id=ctx.principal.store_id,
                    visit_id=ctx.visit_id,
                    method="correction",
                    recorded_by=ctx.principal.login,
                )
            )
    if {"phone", "email", "name_kana", "date_of_birth"} & set(changed):
        for column, value in _blind_indexes(
            runtime,
            phone=reader.required("phone"),
            email=reader.field("email"),
            kana=reader.required("name_kana"),
            birth=date.fromisoformat(reader.required("date_of_birth")),
        ).items():
            setattr(customer, column, value)
    if changed:
        customer.updated_at = utcnow()
    await uow.session.flush()
    view = await _view(uow, runtime, access, access.justified.groups)
    uow.record(
        _event(
            ctx,
            access,
            action=Action.UPDATE,
            resource=f"customers/{customer.id}",
            customer_ids=(customer.id,),
            fields=access.justified.groups,
            changed_fields=tuple(changed),
        )
    )
    return view


async def search_customers(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, criteria: SearchRequest
) -> SearchResult:
    """Exact match through the blind indexes; at most five ids with masked names."""
    resource = "customers/search"
    role = ctx.principal.role
    if role not in SEARCH_ROLES or ctx.purpose not in _search_purposes(role):
        raise denied(ctx, PurposeNotAllowed, action=Action.SEARCH, resource=resource)
    await uow.verify_principal()
    await runtime.limits.consume(
        runtime.settings.search_rate_limit, f"search:{ctx.principal.subject}"
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


def _search_purposes(role: Role) -> frozenset[Purpose]:
    return frozenset(POLICY[role])


def _contract_view(reader: CustomerReader, contract: Contract) -> ContractView:
    return ContractView(
        **contract_out(reader, contract).model_dump(),
        customer_id=contract.customer_id,
        device=device_out(reader, contract),
        billing=BillingOut(
            payment_method=contract.payment_method, account_last4=contract.account_last4
        ),
    )


CONTRACT_EVENT_GROUPS = frozenset({FieldGroup.CONTRACTS, FieldGroup.DEVICE, FieldGroup.BILLING})


async def open_contract(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str, body: ContractCreate
) -> ContractView:
    resource = resource_of("customers", customer_id, "/contracts")
    access = await _authorize(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.CREATE,
        resource=resource,
        purposes=frozenset({Purpose.CONTRACT}),
        requires=frozenset({FieldGroup.CONTRACTS}),
        scopes=frozenset({KeyScope.PROFILE}),
    )
    customer, ciphers = access.customer, access.reader.ciphers
    contract_id = new_id()
    contract = Contract(
        id=contract_id,
        customer_id=customer.id,
        line_number_enc=seal_contract_field(ciphers, contract_id, "line_number", body.line_number),
        plan=body.plan,
        status="active",
        started_on=body.started_on or today_in_japan(),
        device_model=body.device.model,
        imei_enc=seal_contract_field(ciphers, contract_id, "imei", body.device.imei),
        payment_method=body.billing.payment_method,
        account_last4=body.billing.account_last4,
        store_id=ctx.principal.store_id,
    )
    uow.session.add(contract)
    await uow.session.flush()
    uow.record(
        _event(
            ctx,
            access,
            action=Action.CREATE,
            resource=f"contracts/{contract_id}",
            customer_ids=(customer.id,),
            fields=CONTRACT_EVENT_GROUPS,
        )
    )
    return _contract_view(access.reader, contract)


async def terminate_contract(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, contract_id: str, body: ContractPatch
) -> ContractView:
    resource = resource_of("contracts", contract_id)
    cid = canonical_id(contract_id)
    contract = await repository.contract_by_id(uow.session, cid) if cid else None
    access = await _authorize(
        uow,
        runtime,
        ctx,
        contract.customer_id if contract else "",
        action=Action.UPDATE,
        resource=resource,
        purposes=frozenset({Purpose.CONTRACT}),
        requires=frozenset({FieldGroup.CONTRACTS}),
        scopes=frozenset({KeyScope.PROFILE}),
    )
    if contract is None:
        raise NotFound("No such contract.")
    if contract.status == "terminated":
        raise Conflict("The contract is already terminated.")
    ended_on = body.ended_on or today_in_japan()
    if ended_on < contract.started_on:
        raise Conflict("A contract cannot end before it started.")
    contract.status = "terminated"
    contract.ended_on = ended_on
    contract.updated_at = datetime.now(UTC)
    await uow.session.flush()
    uow.record(
        _event(
            ctx,
            access,
            action=Action.UPDATE,
            resource=resource,
            customer_ids=(contract.customer_id,),
            fields=CONTRACT_EVENT_GROUPS,
            changed_fields=("ended_on", "status"),
        )
    )
    return _contract_view(access.reader, contract)
