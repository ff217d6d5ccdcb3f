"""The field catalogue: for each field group, where its values are kept, under which key scope,
who may correct them, and the keys it answers.

Everything else derives from this one table: which data keys a disclosure opens
(``scopes_for``), the key scope of each encrypted column (``COLUMN_SCOPE``), which group a
correctable field belongs to (``CORRECTABLE``), and which columns a correction re-seals. A new
customer text field is one ``Column`` line here (plus its model column and migration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from app.crypto import KeyScope
from app.models import Contract, Customer
from app.policy import FieldGroup, Purpose
from app.validation.phone import format_national
from app.vault import CustomerCiphers

G = FieldGroup
CORRECTION_PURPOSES = frozenset({Purpose.CONTRACT, Purpose.SUPPORT, Purpose.SUBJECT_REQUEST})


def _identity(value: str) -> str:
    return value


@dataclass(frozen=True, slots=True)
class Column:
    """One encrypted customer column (``<name>_enc``) answered under the key ``output``."""

    name: str
    required: bool = True
    decode: Callable[[str], Any] = _identity  # stored text → answer value
    encode: Callable[[Any], str] = str  # corrected value → stored text
    output: str | None = None  # the answer's key, if not the column's name

    @property
    def key(self) -> str:
        return self.output or self.name


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A field group. ``columns`` are encrypted customer columns disclosed as they are;
    ``derived`` are columns the group's own view reads (the document number of the
    ``identity_document`` group) or contract columns (``contract_columns``)."""

    scope: KeyScope | None  # the data key its encrypted values need (None: none)
    outputs: frozenset[str]  # the keys a record answer carries for it
    columns: tuple[Column, ...] = ()
    derived: tuple[str, ...] = ()
    contract_columns: tuple[str, ...] = ()
    correctable_for: frozenset[Purpose] = frozenset()  # purposes under which PATCH may change it
    consents: bool = False  # the marketing consent flags (plain columns with their history)

    @property
    def patch_fields(self) -> tuple[str, ...]:
        """The names ``PATCH /customers/{id}`` takes for this group."""
        return (*(c.name for c in self.columns), *(("consents",) if self.consents else ()))


CATALOGUE: Mapping[FieldGroup, GroupSpec] = {
    G.NAME: GroupSpec(
        KeyScope.IDENTITY,
        frozenset({"name", "name_kana"}),
        columns=(Column("name"), Column("name_kana")),
        correctable_for=CORRECTION_PURPOSES,
    ),
    G.CONTACT: GroupSpec(
        KeyScope.PROFILE,
        frozenset({"phone", "email"}),
        columns=(Column("phone", decode=format_national), Column("email", required=False)),
        correctable_for=CORRECTION_PURPOSES,
    ),
    G.ADDRESS: GroupSpec(
        KeyScope.IDENTITY,
        frozenset({"postal_code", "address"}),
        columns=(Column("postal_code"), Column("address")),
        correctable_for=CORRECTION_PURPOSES,
    ),
    G.BIRTH_DATE: GroupSpec(
        KeyScope.IDENTITY,
        frozenset({"date_of_birth"}),
        columns=(Column("date_of_birth", decode=date.fromisoformat, encode=date.isoformat),),
        correctable_for=CORRECTION_PURPOSES,
    ),
    G.IDENTITY_DOCUMENT: GroupSpec(
        KeyScope.IDENTITY, frozenset({"identity_document"}), derived=("document_number",)
    ),
    G.DOCUMENT_NUMBER: GroupSpec(
        KeyScope.IDENTITY, frozenset({"document_number"}), derived=("document_number",)
    ),
    G.CONTRACTS: GroupSpec(
        KeyScope.PROFILE, frozenset({"contracts"}), contract_columns=("line_number",)
    ),
    G.DEVICE: GroupSpec(KeyScope.PROFILE, frozenset({"devices"}), contract_columns=("imei",)),
    G.BILLING: GroupSpec(None, frozenset({"billing"})),
    G.CONSENTS: GroupSpec(
        None, frozenset({"consents"}), correctable_for=CORRECTION_PURPOSES, consents=True
    ),
    G.VISITS: GroupSpec(None, frozenset({"visits"})),
    G.REPAIRS: GroupSpec(None, frozenset({"repairs"})),
}

# The groups whose answers are built from contract rows, and from visit rows.
CONTRACT_GROUPS = frozenset({G.CONTRACTS, G.DEVICE, G.BILLING})
VISIT_GROUPS = frozenset({G.VISITS, G.REPAIRS})

COLUMN_SCOPE: Mapping[str, KeyScope] = {
    name: spec.scope
    for spec in CATALOGUE.values()
    if spec.scope is not None
    for name in (*(c.name for c in spec.columns), *spec.derived)
}
CONTRACT_COLUMN_SCOPE: Mapping[str, KeyScope] = {
    name: spec.scope
    for spec in CATALOGUE.values()
    if spec.scope is not None
    for name in spec.contract_columns
}
# Which group each correctable field belongs to: a caller corrects only what it may see.
CORRECTABLE: Mapping[str, FieldGroup] = {
    name: g for g, spec in CATALOGUE.items() if spec.correctable_for for name in spec.patch_fields
}
CORRECTABLE_COLUMNS: tuple[Column, ...] = tuple(
    c for spec in CATALOGUE.values() if spec.correctable_for for c in spec.columns
)


def scopes_for(groups: frozenset[FieldGroup]) -> frozenset[KeyScope]:
    """The data keys a disclosure of ``groups`` must open (and no other)."""
    return frozenset(s for g in groups if (s := CATALOGUE[g].scope) is not None)


def seal_customer_field(
    ciphers: CustomerCiphers, customer_id: str, column: str, value: str
) -> bytes:
    cipher = ciphers.for_scope(COLUMN_SCOPE[column])
    return cipher.encrypt(value, table="customer", column=column, row_id=customer_id)


def seal_contract_field(
    ciphers: CustomerCiphers, contract_id: str, column: str, value: str
) -> bytes:
    cipher = ciphers.for_scope(CONTRACT_COLUMN_SCOPE[column])
    return cipher.encrypt(value, table="contract", column=column, row_id=contract_id)


class CustomerReader:
    """Decrypts one customer's columns on demand, with only the keys that were opened."""

    def __init__(self, customer: Customer, ciphers: CustomerCiphers) -> None:
        self.customer = customer
        self.ciphers = ciphers

    def field(self, column: str) -> str | None:
        blob: bytes | None = getattr(self.customer, f"{column}_enc")
        if blob is None:
            return None
        cipher = self.ciphers.for_scope(COLUMN_SCOPE[column])
        return cipher.decrypt(blob, table="customer", column=column, row_id=self.customer.id)

    def required(self, column: str) -> str:
        value = self.field(column)
        if value is None:
            raise LookupError(f"customer column {column} is empty")
        return value

    def contract_field(self, contract: Contract, column: str) -> str:
        cipher = self.ciphers.for_scope(CONTRACT_COLUMN_SCOPE[column])
        blob: bytes = getattr(contract, f"{column}_enc")
        return cipher.decrypt(blob, table="contract", column=column, row_id=contract.id)

    def column_values(self, group: FieldGroup) -> dict[str, Any]:
        """The answer values of a group's plain columns."""
        values: dict[str, Any] = {}
        for column in CATALOGUE[group].columns:
            text = self.required(column.name) if column.required else self.field(column.name)
            values[column.key] = None if text is None else column.decode(text)
        return values
