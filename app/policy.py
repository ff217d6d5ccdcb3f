"""Who may see what, and why: the one policy table of shopvault.

Rows are (role, purpose); each names the field groups disclosed and what must justify the access
(an open visit, a reason, either, or nothing for machine clients). A pair absent from the table
is denied. Nothing else in the code decides which customer fields leave the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from app.audit.events import Action
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
# A manager's subject_request sees everything but the full document number: that is disclosed
# only for fraud prevention and in the customer's own export.
_ALL_BUT_DOCUMENT_NUMBER = set(FieldGroup) - {G.DOCUMENT_NUMBER}


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
        subject_request=_ALL_BUT_DOCUMENT_NUMBER,
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


# Who may attach an existing customer to a visit on a reason instead of the customer's proof of
# presence (the attach is then queued for review).
REASON_INSTEAD_OF_PRESENCE = frozenset({Role.MANAGER})

# A repair visit stays open for weeks: while open it justifies these (role, purpose) views;
# any other access only within VISIT_AUTO_CLOSE_HOURS of the customer's last proof of presence.
WHILE_REPAIR_VISIT_OPEN = frozenset(
    {(Role.TECHNICIAN, Purpose.REPAIR), (Role.TECHNICIAN, Purpose.SUPPORT)}
)


class Operation(StrEnum):
    """What a route does, beyond reading a record: each route declares its operation."""

    READ_CUSTOMER = "read_customer"
    SEARCH_CUSTOMERS = "search_customers"
    REGISTER_CUSTOMER = "register_customer"
    CORRECT_CUSTOMER = "correct_customer"
    OPEN_CONTRACT = "open_contract"
    TERMINATE_CONTRACT = "terminate_contract"
    SEND_MESSAGE = "send_message"
    READ_MESSAGES = "read_messages"
    REQUEST_PRESENCE_CODE = "request_presence_code"
    WORK_VISITS = "work_visits"
    LIST_STALE_REPAIRS = "list_stale_repairs"
    REGISTER_FORMS = "register_forms"
    READ_FORM_REGISTER = "read_form_register"
    DISPOSE_FORMS = "dispose_forms"
    ADMINISTER = "administer"
    READ_ACCOUNTS = "read_accounts"
    APPROVE_ACCOUNTS = "approve_accounts"
    READ_AUDIT_LOG = "read_audit_log"
    HANDLE_ALERTS = "handle_alerts"
    REVIEW_ACCESSES = "review_accesses"
    READ_ACCESS_REPORT = "read_access_report"
    REGISTER_SUBJECT_REQUEST = "register_subject_request"
    READ_SUBJECT_REQUESTS = "read_subject_requests"
    CLOSE_SUBJECT_REQUEST = "close_subject_request"
    EXPORT_CUSTOMER = "export_customer"
    SUSPEND_USE = "suspend_use"
    RESUME_USE = "resume_use"
    ERASE_CUSTOMER = "erase_customer"


@dataclass(frozen=True, slots=True)
class OperationRule:
    """Who may do an operation, and under which purposes.

    ``purposes`` is ``None`` for operations on the shop's own records (visits, administration),
    which take no purpose header; otherwise the caller's purpose must be one of them *and* have a
    row in the policy table for their role (``ANY_PURPOSE``: any purpose of that row), and the
    row must disclose ``requires``."""

    summary: str
    action: Action | None  # what a refusal is recorded as (None: by the HTTP method)
    roles: frozenset[Role]
    purposes: frozenset[Purpose] | None
    requires: frozenset[FieldGroup] = frozenset()
    # False where the row's visit or reason is not asked for (search: how a visit finds its
    # customer, which answers masked names only).
    justified: bool = True
    # False where a visit does not justify it: a reason or a customer request must (the
    # customer's export and erasure).
    visit_justifies: bool = True


ANY_PURPOSE = frozenset(Purpose)
_STORE_STAFF = frozenset({Role.SALES, Role.TECHNICIAN, Role.MANAGER})
_EVERY_ROLE = frozenset(Role)
_MANAGERS = frozenset({Role.MANAGER})
_SUBJECT_REQUEST = frozenset({Purpose.SUBJECT_REQUEST})

OPERATIONS: Mapping[Operation, OperationRule] = {
    Operation.READ_CUSTOMER: OperationRule(
        "read a customer record", Action.READ, _EVERY_ROLE, ANY_PURPOSE
    ),
    Operation.SEARCH_CUSTOMERS: OperationRule(
        "search customers (exact match, masked names)",
        Action.SEARCH,
        _STORE_STAFF | {Role.FRAUD_SYSTEM},
        ANY_PURPOSE,
        justified=False,
    ),
    Operation.REGISTER_CUSTOMER: OperationRule(
        "register a customer within a visit",
        Action.CREATE,
        _EVERY_ROLE,
        frozenset({Purpose.CONTRACT}),
    ),
    Operation.CORRECT_CUSTOMER: OperationRule(
        "correct a customer's data (only fields of the groups the row discloses)",
        Action.UPDATE,
        _STORE_STAFF,
        frozenset({Purpose.CONTRACT, Purpose.SUPPORT, Purpose.SUBJECT_REQUEST}),
    ),
    Operation.OPEN_CONTRACT: OperationRule(
        "open a contract",
        Action.CREATE,
        _EVERY_ROLE,
        frozenset({Purpose.CONTRACT}),
        frozenset({FieldGroup.CONTRACTS}),
    ),
    Operation.TERMINATE_CONTRACT: OperationRule(
        "terminate a contract",
        Action.UPDATE,
        _EVERY_ROLE,
        frozenset({Purpose.CONTRACT}),
        frozenset({FieldGroup.CONTRACTS}),
    ),
    # A send uses the customer's contact group without disclosing it: the purpose needs a row,
    # and the message rules (app/messages/rules.py: role × category, visits within 14 days)
    # decide the rest.
    Operation.SEND_MESSAGE: OperationRule(
        "send an approved template through the official channel",
        Action.MESSAGE,
        _STORE_STAFF | {Role.BILLING_SYSTEM},
        ANY_PURPOSE,
        justified=False,
    ),
    Operation.READ_MESSAGES: OperationRule(
        "read a customer's messages and their delivery status (as a read)",
        Action.READ,
        _EVERY_ROLE,
        ANY_PURPOSE,
    ),
    Operation.REQUEST_PRESENCE_CODE: OperationRule(
        "send a one-time code to the customer's phone (proof of presence by phone)",
        Action.MESSAGE,
        _STORE_STAFF,
        frozenset({Purpose.SUPPORT}),
        justified=False,
    ),
    Operation.WORK_VISITS: OperationRule(
        "open, read and change visits of one's own store", None, _STORE_STAFF, None
    ),
    Operation.LIST_STALE_REPAIRS: OperationRule(
        "list one's store's stale repairs (`GET /visits?status=stale`)",
        Action.READ,
        frozenset({Role.MANAGER}),
        None,
    ),
    Operation.REGISTER_FORMS: OperationRule(
        "register a paper form filled in at a visit of one's own store",
        Action.CREATE,
        _STORE_STAFF,
        None,
    ),
    Operation.READ_FORM_REGISTER: OperationRule(
        "read the paper-form register (a manager: own store only; an auditor: any store)",
        Action.READ,
        frozenset({Role.MANAGER, Role.AUDITOR}),
        None,
    ),
    Operation.DISPOSE_FORMS: OperationRule(
        "dispose of a paper form of one's own store",
        Action.DISPOSE,
        frozenset({Role.MANAGER}),
        None,
    ),
    Operation.ADMINISTER: OperationRule(
        "stores, staff and system clients (no customer data)",
        Action.ADMIN,
        frozenset({Role.ADMIN}),
        None,
    ),
    Operation.READ_ACCOUNTS: OperationRule(
        "list staff and system clients (who may reach what)",
        Action.ADMIN,
        frozenset({Role.ADMIN, Role.AUDITOR}),
        None,
    ),
    # Maker–checker: an admin's change that opens a way to customer data waits for an auditor.
    Operation.APPROVE_ACCOUNTS: OperationRule(
        "approve a pending staff or client change", Action.ADMIN, frozenset({Role.AUDITOR}), None
    ),
    Operation.READ_AUDIT_LOG: OperationRule(
        "read access events", Action.READ, frozenset({Role.AUDITOR}), frozenset({Purpose.AUDIT})
    ),
    Operation.HANDLE_ALERTS: OperationRule(
        "read and resolve alerts",
        Action.READ,
        frozenset({Role.AUDITOR}),
        frozenset({Purpose.AUDIT}),
    ),
    Operation.REVIEW_ACCESSES: OperationRule(
        "review managers' looks without a visit",
        Action.READ,
        frozenset({Role.AUDITOR}),
        frozenset({Purpose.AUDIT}),
    ),
    Operation.READ_ACCESS_REPORT: OperationRule(
        "a customer's access report (who looked: store and role, never the name)",
        Action.READ,
        _EVERY_ROLE,
        frozenset({Purpose.SUBJECT_REQUEST}),
    ),
    # Customers' requests (APPI): the register holds ids, kinds and dates, no personal data.
    Operation.REGISTER_SUBJECT_REQUEST: OperationRule(
        "register a customer's request (a visit with proof of presence, or a reason)",
        Action.CREATE,
        _MANAGERS,
        _SUBJECT_REQUEST,
    ),
    Operation.READ_SUBJECT_REQUESTS: OperationRule(
        "list customers' requests (a manager: own store; an auditor: all)",
        Action.READ,
        _MANAGERS | {Role.AUDITOR},
        frozenset({Purpose.SUBJECT_REQUEST, Purpose.AUDIT}),
        justified=False,
    ),
    Operation.CLOSE_SUBJECT_REQUEST: OperationRule(
        "close a customer's request of one's own store with its outcome",
        Action.UPDATE,
        _MANAGERS,
        _SUBJECT_REQUEST,
        justified=False,
    ),
    Operation.EXPORT_CUSTOMER: OperationRule(
        "export everything held on a customer (a reason or an open disclosure request)",
        Action.EXPORT,
        _MANAGERS,
        _SUBJECT_REQUEST,
        visit_justifies=False,
    ),
    Operation.SUSPEND_USE: OperationRule(
        "suspend the use of a customer's data", Action.UPDATE, _MANAGERS, _SUBJECT_REQUEST
    ),
    Operation.RESUME_USE: OperationRule(
        "resume the use of a customer's data", Action.UPDATE, _MANAGERS, _SUBJECT_REQUEST
    ),
    Operation.ERASE_CUSTOMER: OperationRule(
        "erase a customer on request (a reason or an open deletion request)",
        Action.DELETE,
        _MANAGERS,
        _SUBJECT_REQUEST,
        visit_justifies=False,
    ),
}


class SubjectRequestKind(StrEnum):
    DISCLOSURE = "disclosure"
    CORRECTION = "correction"
    SUSPENSION = "suspension"
    DELETION = "deletion"
    ACCESS_LOG = "access_log"


# What an open customer request justifies (``X-Subject-Request-Id``, a manager's
# ``subject_request`` access at the request's store): only the operations its kind needs.
SUBJECT_REQUEST_COVERS: Mapping[SubjectRequestKind, frozenset[Operation]] = {
    SubjectRequestKind.DISCLOSURE: frozenset(
        {Operation.EXPORT_CUSTOMER, Operation.READ_CUSTOMER, Operation.READ_MESSAGES}
    ),
    SubjectRequestKind.ACCESS_LOG: frozenset({Operation.READ_ACCESS_REPORT}),
    SubjectRequestKind.CORRECTION: frozenset({Operation.CORRECT_CUSTOMER}),
    SubjectRequestKind.SUSPENSION: frozenset({Operation.SUSPEND_USE, Operation.RESUME_USE}),
    SubjectRequestKind.DELETION: frozenset({Operation.ERASE_CUSTOMER}),
}


def request_kinds_covering(operation: Operation) -> tuple[str, ...]:
    """The kinds of customer request that justify ``operation`` (sorted; none: no request)."""
    return tuple(
        sorted(kind.value for kind, ops in SUBJECT_REQUEST_COVERS.items() if operation in ops)
    )


# The customer's own export discloses every group, the full document number included.
EXPORT_GROUPS = frozenset(FieldGroup)

# After erasure the identity-verification record is kept while the law requires it, usable only
# for these (role, purpose) reads, and only its own groups.
READ_AFTER_ERASURE = frozenset(
    {(Role.FRAUD_SYSTEM, Purpose.FRAUD_PREVENTION), (Role.AUDITOR, Purpose.AUDIT)}
)
RETAINED_AFTER_ERASURE = frozenset(
    {G.NAME, G.ADDRESS, G.BIRTH_DATE, G.IDENTITY_DOCUMENT, G.DOCUMENT_NUMBER}
)


def operation_allows(role: Role, purpose: Purpose | None, operation: Operation) -> Rule | None:
    """The policy row under which ``role`` may do ``operation`` for ``purpose``, if any.

    For operations without a purpose the row is a placeholder with no groups."""
    op = OPERATIONS[operation]
    if role not in op.roles:
        return None
    if op.purposes is None:
        return _NO_DATA
    if purpose is None or purpose not in op.purposes:
        return None
    rule = rule_for(role, purpose)
    if rule is None or not op.requires <= rule.groups:
        return None
    return rule


_NO_DATA = Rule(frozenset(), Justification.NONE)


def render_operations_markdown() -> str:
    """The operation table as the docs page shows it."""
    roles = list(Role)
    lines = [
        "| operation | " + " | ".join(r.value for r in roles) + " | purposes |",
        "| --- " * (len(roles) + 2) + "|",
    ]
    for operation, op in OPERATIONS.items():
        cells = ["✓" if role in op.roles else "—" for role in roles]
        if op.purposes is None:
            purposes = "none (store records)"
        elif op.purposes == ANY_PURPOSE:
            purposes = "any of the role's rows"
        else:
            purposes = ", ".join(sorted(p.value for p in op.purposes))
        if op.requires:
            purposes += " (row must give " + ", ".join(sorted(op.requires)) + ")"
        if not op.visit_justifies:
            purposes += " (a reason or a customer request; a visit is not enough)"
        lines.append(
            f"| {operation.value}: {op.summary} | " + " | ".join(cells) + f" | {purposes} |"
        )
    return "\n".join(lines)


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
