"""Contracts: opening and terminating a customer's contracts (purpose ``contract``).

The worked example of a resource that touches a customer: open the customer through the access
pipeline (which decides the groups and checks the visit), do the work, record the access with
the groups actually disclosed, answer only those groups.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from app.access.context import AccessContext
from app.access.guard import permit
from app.access.pipeline import OpenedCustomer, open_customer, record_access
from app.audit.events import Action
from app.contracts import repository
from app.contracts.schemas import ContractCreate, ContractPatch, ContractView
from app.crypto import KeyScope
from app.customers.catalogue import CONTRACT_GROUPS, CustomerReader, seal_contract_field
from app.customers.disclosure import billing_out, contract_out, device_out
from app.errors import Conflict, NotFound
from app.kit.ids import canonical_id, resource_of
from app.models import Contract
from app.models.base import new_id, utcnow
from app.policy import FieldGroup
from app.retention.service import recompute_form_retention
from app.runtime import Runtime
from app.uow import UnitOfWork

TOKYO = ZoneInfo("Asia/Tokyo")
NO_SUCH_CONTRACT = "No such contract."
# Contract rows are sealed under the customer's profile key.
CONTRACT_SCOPES = frozenset({KeyScope.PROFILE})


def today_in_japan() -> date:
    return datetime.now(TOKYO).date()


def contract_view(
    reader: CustomerReader, contract: Contract, groups: frozenset[FieldGroup]
) -> ContractView:
    return ContractView(
        **contract_out(reader, contract).model_dump(),
        customer_id=contract.customer_id,
        fields=sorted(groups),
        **({"device": device_out(reader, contract)} if FieldGroup.DEVICE in groups else {}),
        **({"billing": billing_out(contract)} if FieldGroup.BILLING in groups else {}),
    )


def _disclosed(opened: OpenedCustomer) -> frozenset[FieldGroup]:
    return opened.groups & CONTRACT_GROUPS


async def open_contract(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str, body: ContractCreate
) -> ContractView:
    opened = await open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.CREATE,
        resource=resource_of("customers", customer_id, "/contracts"),
        scopes=CONTRACT_SCOPES,
    )
    ciphers = opened.reader.ciphers
    contract_id = new_id()
    contract = Contract(
        id=contract_id,
        customer_id=opened.id,
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
    await repository.add(uow.session, contract)
    # Retention (paper forms): identity copies and applications are kept while a contract lasts.
    await recompute_form_retention(uow, opened.id)
    groups = _disclosed(opened)
    record_access(
        uow, ctx, opened, action=Action.CREATE, resource=f"contracts/{contract_id}", fields=groups
    )
    return contract_view(opened.reader, contract, groups)


async def terminate_contract(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, contract_id: str, body: ContractPatch
) -> ContractView:
    resource = resource_of("contracts", contract_id)
    # The policy first: nothing about the contract is looked at for a caller it refuses.
    permit(ctx, action=Action.UPDATE, resource=resource)
    cid = canonical_id(contract_id)
    customer_id = await repository.customer_of(uow.session, cid) if cid else None
    # An unknown contract goes through the same visit check as a known one (a visit-bound
    # caller gets the visit's 403 either way); a caller with a reason gets the 404.
    opened = await open_customer(
        uow,
        runtime,
        ctx,
        customer_id or "",
        action=Action.UPDATE,
        resource=resource,
        scopes=CONTRACT_SCOPES,
        not_found=NO_SUCH_CONTRACT,
    )
    contract = await repository.by_id(uow.session, cid or "", lock=True)
    if contract is None or contract.customer_id != opened.id:
        raise NotFound(NO_SUCH_CONTRACT)
    if contract.status == "terminated":
        raise Conflict("The contract is already terminated.")
    ended_on = body.ended_on or today_in_japan()
    if ended_on < contract.started_on:
        raise Conflict("A contract cannot end before it started.")
    contract.status = "terminated"
    contract.ended_on = ended_on
    contract.updated_at = utcnow()
    await repository.flush(uow.session)
    # Retention (paper forms): the 3 years of identity copies and applications start now.
    await recompute_form_retention(uow, opened.id)
    groups = _disclosed(opened)
    record_access(
        uow,
        ctx,
        opened,
        action=Action.UPDATE,
        resource=resource,
        fields=groups,
        changed_fields=("ended_on", "status"),
    )
    return contract_view(opened.reader, contract, groups)
