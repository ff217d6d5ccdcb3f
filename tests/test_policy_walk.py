"""The whole policy table, walked through the HTTP API: every role × every purpose.

The expected table and the keys of each field group are copied here from SPEC.md ("Field groups
and the policy"), not imported from the app, so that a wrong row in ``app/policy.py`` (or a view
that leaks a field of a group not disclosed) fails this test.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.policy import POLICY
from tests import cast
from tests.access_log import event_of
from tests.conftest import login_client
from tests.world import add_contract, open_visit, purpose, register_customer

Headers = dict[str, str]

PURPOSES = (
    "contract",
    "identity_verification",
    "billing",
    "repair",
    "support",
    "fraud_prevention",
    "subject_request",
    "audit",
)
ROLES = ("sales", "technician", "manager", "auditor", "admin", "billing_system", "fraud_system")

# SPEC.md, "Field groups and the policy": the JSON keys of each group.
GROUP_KEYS: dict[str, frozenset[str]] = {
    "name": frozenset({"name", "name_kana"}),
    "contact": frozenset({"phone", "email"}),
    "address": frozenset({"postal_code", "address"}),
    "birth_date": frozenset({"date_of_birth"}),
    "identity_document": frozenset({"identity_document"}),
    "document_number": frozenset({"document_number"}),
    "contracts": frozenset({"contracts"}),
    "device": frozenset({"devices"}),
    "billing": frozenset({"billing"}),
    "consents": frozenset({"consents"}),
    "visits": frozenset({"visits"}),
    "repairs": frozenset({"repairs"}),
}
ALL_GROUPS = frozenset(GROUP_KEYS)

_SALES_CONTRACT = frozenset(
    {
        "name",
        "contact",
        "address",
        "birth_date",
        "identity_document",
        "contracts",
        "device",
        "consents",
    }
)
_SALES_IDENTITY = frozenset({"name", "address", "birth_date", "identity_document"})
_SALES_BILLING = frozenset({"name", "contracts", "billing"})
_TECH_REPAIR = frozenset({"name", "contact", "device", "repairs"})

# SPEC.md's policy table, literally: role → purpose → groups (absent purpose: denied).
SPEC_POLICY: dict[str, dict[str, frozenset[str]]] = {
    "sales": {
        "contract": _SALES_CONTRACT,
        "identity_verification": _SALES_IDENTITY,
        "billing": _SALES_BILLING,
        "support": frozenset({"name", "contact", "contracts", "visits"}),
    },
    "technician": {
        "identity_verification": frozenset({"name", "birth_date"}),
        "repair": _TECH_REPAIR,
        "support": _TECH_REPAIR,
    },
    "manager": {
        "contract": _SALES_CONTRACT | {"visits", "repairs"},
        "identity_verification": _SALES_IDENTITY,
        "billing": _SALES_BILLING,
        "repair": _TECH_REPAIR,
        "support": frozenset({"name", "contact", "address", "contracts", "visits", "repairs"}),
        "fraud_prevention": frozenset(
            {"name", "birth_date", "identity_document", "contracts", "visits"}
        ),
        "subject_request": ALL_GROUPS - {"document_number"},
    },
    "auditor": {"audit": frozenset({"name"})},
    "admin": {},
    "billing_system": {"billing": frozenset({"name", "address", "contracts", "billing"})},
    "fraud_system": {
        "fraud_prevention": frozenset(
            {
                "name",
                "birth_date",
                "identity_document",
                "document_number",
                "contracts",
                "visits",
            }
        )
    },
}
# SPEC.md: what must justify each role's access besides the purpose.
SPEC_JUSTIFICATION = {
    "sales": "visit",
    "technician": "repair_visit",
    "manager": "visit_or_reason",
    "auditor": "reason",
    "billing_system": "none",
    "fraud_system": "none",
}
REASON = "お客様からの開示請求に対応するため"


def test_policy_module_is_the_spec_table() -> None:
    actual = {
        role.value: {
            purpose.value: frozenset(g.value for g in rule.groups)
            for purpose, rule in rules.items()
        }
        for role, rules in POLICY.items()
    }
    assert actual == SPEC_POLICY
    for role, rules in POLICY.items():
        for rule in rules.values():
            assert rule.justification.value == SPEC_JUSTIFICATION[role.value], role


def test_every_role_and_purpose_discloses_exactly_the_policy_groups(
    client: TestClient, as_member: Callable[..., Headers], db: Engine
) -> None:
    sales, tech, manager = (as_member(m) for m in (cast.SALES, cast.TECHNICIAN, cast.MANAGER))
    customer = register_customer(client, sales, seed=7)
    add_contract(client, sales, customer.id, customer.visit_id)
    repair_visit = open_visit(client, tech, "repair", customer_id=customer.id)
    sales_visit = open_visit(client, sales, "inquiry", customer_id=customer.id)
    manager_visit = open_visit(client, manager, "inquiry", customer_id=customer.id)

    auditor, admin = as_member(cast.AUDITOR), as_member(cast.ADMIN)
    billing, fraud = login_client(client, cast.BILLING), login_client(client, cast.FRAUD)

    # (label, role, the headers for a purpose, whether an allowed access is queued for review)
    callers: list[tuple[str, str, Callable[[str], Headers], bool]] = [
        ("sales+visit", "sales", lambda p: purpose(sales, p, visit=sales_visit), False),
        ("tech+repair visit", "technician", lambda p: purpose(tech, p, visit=repair_visit), False),
        ("manager+visit", "manager", lambda p: purpose(manager, p, visit=manager_visit), False),
        ("manager+reason", "manager", lambda p: purpose(manager, p, reason=REASON), True),
        ("auditor+reason", "auditor", lambda p: purpose(auditor, p, reason=REASON), False),
        ("admin", "admin", lambda p: purpose(admin, p, reason=REASON), False),
        ("billing", "billing_system", lambda p: purpose(billing, p), False),
        ("fraud", "fraud_system", lambda p: purpose(fraud, p), False),
    ]
    assert {role for _, role, _, _ in callers} == set(ROLES)

    failures: list[str] = []
    for label, role, headers_for, review in callers:
        for p in PURPOSES:
            response = client.get(f"/customers/{customer.id}", headers=headers_for(p))
            event = event_of(db, response)
            expected = SPEC_POLICY[role].get(p)
            where = f"{label} / {p}"
            if expected is None:
                body = response.json()
                if response.status_code != 403 or body["type"] != "/problems/purpose-not-allowed":
                    failures.append(f"{where}: expected 403 purpose-not-allowed, got {body}")
                if (event.outcome, event.action, event.denial, event.customer_ids) != (
                    "denied",
                    "read",
                    "purpose-not-allowed",
                    [customer.id],
                ):
                    failures.append(f"{where}: denied event wrong: {vars(event.row)}")
                continue
            if response.status_code != 200:
                failures.append(
                    f"{where}: expected 200, got {response.status_code} {response.text}"
                )
                continue
            body = response.json()
            wanted_keys = {"id", "fields"}.union(*(GROUP_KEYS[g] for g in expected))
            if body["fields"] != sorted(expected):
                failures.append(f"{where}: fields {body['fields']} != {sorted(expected)}")
            if set(body) != wanted_keys:
                failures.append(f"{where}: keys {sorted(set(body) ^ wanted_keys)} differ")
            if response.headers.get("cache-control") != "no-store":
                failures.append(f"{where}: no Cache-Control: no-store")
            if (
                event.action,
                event.outcome,
                event.fields,
                event.customer_ids,
                event.purpose,
                event.review_required,
            ) != ("read", "allowed", sorted(expected), [customer.id], p, review):
                failures.append(f"{where}: read event wrong: {vars(event.row)}")
    assert not failures, "\n".join(failures)


def test_disclosed_groups_carry_the_customers_values(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    """A manager's subject_request sees every group, with values that match what was given."""
    sales, manager = as_member(cast.SALES), as_member(cast.MANAGER)
    customer = register_customer(client, sales, seed=11)
    contract = add_contract(client, sales, customer.id, customer.visit_id, seed=3)
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(manager, "subject_request", reason=REASON)
    )
    assert response.status_code == 200, response.text
    view = response.json()
    given = customer.body
    assert view["name"] == given["name"]
    assert view["name_kana"] == given["name_kana"]
    assert view["phone"] == given["phone"]
    assert view["email"] == given["email"]
    assert view["postal_code"] == given["postal_code"]
    assert view["address"] == given["address"]
    assert view["date_of_birth"] == given["date_of_birth"]
    number = given["identity_document"]["number"]
    # The full number is not among a manager's groups: only fraud prevention and the export.
    assert "document_number" not in view and number not in response.text
    fraud = login_client(client, cast.FRAUD)
    for_fraud = client.get(f"/customers/{customer.id}", headers=purpose(fraud, "fraud_prevention"))
    assert for_fraud.json()["document_number"] == number
    assert view["identity_document"]["type"] == "drivers_license"
    assert view["identity_document"]["number_last4"] == number[-4:]
    assert view["identity_document"]["verified_store"] == "S001"
    assert [c["id"] for c in view["contracts"]] == [contract["id"]]
    assert view["devices"] == [
        {
            "contract_id": contract["id"],
            "model": "Pixel 9",
            "imei_last4": contract["request"]["device"]["imei"][-4:],
        }
    ]
    assert view["billing"] == {"payment_method": "credit_card", "account_last4": "4242"}
    assert view["consents"] == {"marketing_email": False, "marketing_sms": False}
    assert [v["id"] for v in view["visits"]] == [customer.visit_id]
