"""Turning a customer's rows into the view the policy allows: decrypt only what is disclosed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from app.crypto import FieldCipher, KeyScope
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
from app.models import Contract, Customer, Visit
from app.policy import FieldGroup
from app.validation.documents import DocumentType, last4
from app.validation.phone import format_national
from app.vault import CustomerCiphers
from app.visits.rules import effective_closed_at

# Which key scope protects each encrypted customer column.
CUSTOMER_COLUMN_SCOPE: dict[str, KeyScope] = {
    "name": KeyScope.IDENTITY,
    "name_kana": KeyScope.IDENTITY,
    "date_of_birth": KeyScope.IDENTITY,
    "postal_code": KeyScope.IDENTITY,
    "address": KeyScope.IDENTITY,
    "document_number": KeyScope.IDENTITY,
    "phone": KeyScope.PROFILE,
    "email": KeyScope.PROFILE,
}
CONTRACT_COLUMN_SCOPE: dict[str, KeyScope] = {
    "line_number": KeyScope.PROFILE,
    "imei": KeyScope.PROFILE,
}

# The groups that need contract rows, and those that need visit rows.
CONTRACT_GROUPS = frozenset({FieldGroup.CONTRACTS, FieldGroup.DEVICE, FieldGroup.BILLING})
VISIT_GROUPS = frozenset({FieldGroup.VISITS, FieldGroup.REPAIRS})


def seal_customer_field(
    ciphers: CustomerCiphers, customer_id: str, column: str, value: str
) -> bytes:
    cipher = ciphers.for_scope(CUSTOMER_COLUMN_SCOPE[column])
    return cipher.encrypt(value, table="customer", column=column, row_id=customer_id)


def seal_contract_field(
    ciphers: CustomerCiphers, contract_id: str, column: str, value: str
) -> bytes:
    cipher = ciphers.for_scope(CONTRACT_COLUMN_SCOPE[column])
    return cipher.encrypt(value, table="contract", column=column, row_id=contract_id)


class CustomerReader:
    """Decrypts one customer's columns on demand."""

    def __init__(self, customer: Customer, ciphers: CustomerCiphers) -> None:
        self.customer = customer
        self.ciphers = ciphers

    def field(self, column: str) -> str | None:
        blob: bytes | None = getattr(self.customer, f"{column}_enc")
        if blob is None:
            return None
        cipher = self.ciphers.for_scope(CUSTOMER_COLUMN_SCOPE[column])
        return cipher.decrypt(blob, table="customer", column=column, row_id=self.customer.id)

    def required(self, column: str) -> str:
        value = self.field(column)
        if value is None:
            raise LookupError(f"customer column {column} is empty")
        return value

    def contract_field(self, contract: Contract, column: str) -> str:
        cipher: FieldCipher = self.ciphers.for_scope(CONTRACT_COLUMN_SCOPE[column])
        blob: bytes = getattr(contract, f"{column}_enc")
        return cipher.decrypt(blob, table="contract", column=column, row_id=contract.id)


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


def scopes_for(groups: frozenset[FieldGroup]) -> set[KeyScope]:
    scopes: set[KeyScope] = set()
    if groups & {
        FieldGroup.NAME,
        FieldGroup.ADDRESS,
        FieldGroup.BIRTH_DATE,
        FieldGroup.IDENTITY_DOCUMENT,
        FieldGroup.DOCUMENT_NUMBER,
    }:
        scopes.add(KeyScope.IDENTITY)
    if groups & {FieldGroup.CONTACT, FieldGroup.CONTRACTS, FieldGroup.DEVICE}:
        scopes.add(KeyScope.PROFILE)
    return scopes


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
    G = FieldGroup
    if G.NAME in groups:
        values["name"] = reader.required("name")
        values["name_kana"] = reader.required("name_kana")
    if G.CONTACT in groups:
        values["phone"] = format_national(reader.required("phone"))
        values["email"] = reader.field("email")
    if G.ADDRESS in groups:
        values["postal_code"] = reader.required("postal_code")
        values["address"] = reader.required("address")
    if G.BIRTH_DATE in groups:
        values["date_of_birth"] = date.fromisoformat(reader.required("date_of_birth"))
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
        values["billing"] = (
            BillingOut(payment_method=current.payment_method, account_last4=current.account_last4)
            if current
            else None
        )
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
