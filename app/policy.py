"""Who may see what, and why: the one policy table of shopvault.

Rows are (role, purpose); each names the field groups disclosed and what must justify the access
(an open visit, a reason, either, or nothing for machine clients). A pair absent from the table
is denied. Nothing else in the code decides which customer fields leave the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from app.roles import Role


class Purpose(StrEnum):
    CONTRACT = "contract"
    IDENTITY_VERIFICATION = "identity_verification"
    BILLING = "billing"
    REPAIR = "repair"
    SUPPORT = "support"
    FRAUD_PREVENTION = "fraud_prevention"
    SUBJECT_REQUEST = "subject_request"
    AUDIT = "audit"


class FieldGroup(StrEnum):
    NAME = "name"
    CONTACT = "contact"
    ADDRESS = "address"
    BIRTH_DATE = "birth_date"
    IDENTITY_DOCUMENT = "identity_document"
    DOCUMENT_NUMBER = "document_number"
    CONTRACTS = "contracts"
    DEVICE = "device"
    BILLING = "billing"
    CONSENTS = "consents"
    VISITS = "visits"
    REPAIRS = "repairs"


class Justification(StrEnum):
    """What must accompany an access besides the purpose."""

    NONE = "none"  # machine clients: the purpose is the whole justification
    VISIT = "visit"  # an open visit for this customer at the caller's store
    REPAIR_VISIT = "repair_visit"  # the same, of type repair
    VISIT_OR_REASON = "visit_or_reason"  # a visit, or a reason (then queued for review)
    REASON = "reason"


@dataclass(frozen=True, slots=True)
class Rule:
    groups: frozenset[FieldGroup]
    justification: Justification


G = FieldGroup
_SALES_CONTRACT = {
    G.NAME,
    G.CONTACT,
    G.ADDRESS,
    G.BIRTH_DATE,
    G.IDENTITY_DOCUMENT,
    G.CONTRACTS,
    G.DEVICE,
    G.CONSENTS,
}
_SALES_IDENTITY = {G.NAME, G.ADDRESS, G.BIRTH_DATE, G.IDENTITY_DOCUMENT}
_SALES_BILLING = {G.NAME, G.CONTRACTS, G.BILLING}
_SALES_SUPPORT = {G.NAME, G.CONTACT, G.CONTRACTS, G.VISITS}
_TECH_REPAIR = {G.NAME, G.CONTACT, G.DEVICE, G.REPAIRS}
_ALL = set(FieldGroup)


def _rules(justification: Justification, **groups: set[FieldGroup]) -> dict[Purpose, Rule]:
    return {
        Purpose(purpose): Rule(frozenset(fields), justification)
        for purpose, fields in groups.items()
    }


POLICY: Mapping[Role, Mapping[Purpose, Rule]] = {
    Role.SALES: _rules(
        Justification.VISIT,
        contract=_SALES_CONTRACT,
        identity_verification=_SALES_IDENTITY,
        billing=_SALES_BILLING,
        support=_SALES_SUPPORT,
    ),
    Role.TECHNICIAN: _rules(
        Justification.REPAIR_VISIT,
        identity_verification={G.NAME, G.BIRTH_DATE},
        repair=_TECH_REPAIR,
        support=_TECH_REPAIR,
    ),
    Role.MANAGER: _rules(
        Justification.VISIT_OR_REASON,
        contract=_SALES_CONTRACT | {G.VISITS, G.REPAIRS},
        identity_verification=_SALES_IDENTITY,
        billing=_SALES_BILLING,
        repair=_TECH_REPAIR,
        support={G.NAME, G.CONTACT, G.ADDRESS, G.CONTRACTS, G.VISITS, G.REPAIRS},
        fraud_prevention={G.NAME, G.BIRTH_DATE, G.IDENTITY_DOCUMENT, G.CONTRACTS, G.VISITS},
        subject_request=_ALL,
    ),
    Role.AUDITOR: _rules(Justification.REASON, audit={G.NAME}),
    Role.ADMIN: {},
    Role.BILLING_SYSTEM: _rules(
        Justification.NONE, billing={G.NAME, G.ADDRESS, G.CONTRACTS, G.BILLING}
    ),
    Role.FRAUD_SYSTEM: _rules(
        Justification.NONE,
        fraud_prevention={
            G.NAME,
            G.BIRTH_DATE,
            G.IDENTITY_DOCUMENT,
            G.DOCUMENT_NUMBER,
            G.CONTRACTS,
            G.VISITS,
        },
    ),
}


def rule_for(role: Role, purpose: Purpose) -> Rule | None:
    return POLICY[role].get(purpose)


# Purposes that may still reach a customer whose use is suspended (APPI suspension of use).
PURPOSES_WHILE_SUSPENDED = frozenset({Purpose.SUBJECT_REQUEST, Purpose.AUDIT})


def render_markdown() -> str:
    """The table as the docs page shows it."""
    purposes = list(Purpose)
    lines = [
        "| role | " + " | ".join(p.value for p in purposes) + " |",
        "| --- " * (len(purposes) + 1) + "|",
    ]
    for role, rules in POLICY.items():
        justification = {r.justification for r in rules.values()}
        needs = f" (*{next(iter(justification)).value}*)" if justification else ""
        cells = []
        for purpose in purposes:
            rule = rules.get(purpose)
            cells.append(", ".join(sorted(g.value for g in rule.groups)) if rule else "—")
        lines.append(f"| {role.value}{needs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
