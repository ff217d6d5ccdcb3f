"""Turning a customer's rows into the view the policy allows: decrypt only what is disclosed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from app.crypto import FieldCipher
from app.customers.catalogue import CATALOGUE, CustomerReader
from app.customers.schemas import (
    BillingOut,
    ConsentsOut,
    ContractOut,
    CustomerView,
    DeviceOut,
    IdentityDocumentOut,
    RepairOut,
    VisitSummary,
)
from app.models import Contract, Visit
from app.policy import FieldGroup
from app.validation.documents import DocumentType, last4
from app.validation.phone import format_national
from app.visits.rules import effective_closed_at

G = FieldGroup


def contract_out(reader: CustomerReader, contract: Contract) -> ContractOut:
    return ContractOut(
        id=contract.id,
        line_number=format_national(reader.contract_field(contract, "line_number")),
        plan=contract.plan,
        status=contract.status,
        started_on=contract.started_on,
        ended_on=contract.ended_on,
    )


def device_out(reader: CustomerReader, contract: Contract) -> DeviceOut:
    return DeviceOut(
        contract_id=contract.id,
        model=contract.device_model,
        imei_last4=reader.contract_field(contract, "imei")[-4:],
    )


def billing_out(contract: Contract) -> BillingOut:
    return BillingOut(payment_method=contract.payment_method, account_last4=contract.account_last4)


def build_view(
    reader: CustomerReader,
    groups: frozenset[FieldGroup],
    *,
    verified_store: str | None,
    contracts: Sequence[Contract] = (),
    visits: Sequence[tuple[Visit, str]] = (),
    visit_cipher: FieldCipher | None = None,
    now: datetime,
) -> CustomerView:
    customer = reader.customer
    values: dict[str, Any] = {"id": customer.id, "fields": sorted(groups)}
    for group in groups:
        if CATALOGUE[group].columns:
            values.update(reader.column_values(group))
    if G.IDENTITY_DOCUMENT in groups or G.DOCUMENT_NUMBER in groups:
        number = reader.field("document_number")
        if G.IDENTITY_DOCUMENT in groups:
            values["identity_document"] = IdentityDocumentOut(
                type=DocumentType(customer.document_type),
                number_last4=last4(number) if number else None,
                verified_at=customer.document_verified_at,
                verified_store=verified_store,
            )
        if G.DOCUMENT_NUMBER in groups:
            values["document_number"] = number
    if G.CONTRACTS in groups:
        values["contracts"] = [contract_out(reader, c) for c in contracts]
    if G.DEVICE in groups:
        values["devices"] = [device_out(reader, c) for c in contracts]
    if G.BILLING in groups:
        current = next((c for c in contracts if c.status == "active"), None) or next(
            iter(contracts), None
        )
        values["billing"] = billing_out(current) if current else None
    if G.CONSENTS in groups:
        values["consents"] = ConsentsOut(
            marketing_email=customer.marketing_email, marketing_sms=customer.marketing_sms
        )
    if G.VISITS in groups:
        values["visits"] = [
            VisitSummary(
                id=v.id,
                store=code,
                type=v.type,
                opened_at=v.opened_at,
                closed_at=effective_closed_at(v, now),
            )
            for v, code in visits
        ]
    if G.REPAIRS in groups:
        values["repairs"] = [
            RepairOut(
                visit_id=v.id,
                device_model=v.repair_device_model or "",
                symptom=decrypt_visit_text(visit_cipher, v, "repair_symptom") or "",
                status=v.repair_status or "received",
                updated_at=v.repair_updated_at,
            )
            for v, _code in visits
            if v.type == "repair"
        ]
    return CustomerView(**values)


def decrypt_visit_text(cipher: FieldCipher | None, visit: Visit, column: str) -> str | None:
    blob: bytes | None = getattr(visit, f"{column}_enc")
    if blob is None or cipher is None:
        return None
    return cipher.decrypt(blob, table="visit", column=column, row_id=visit.id)
