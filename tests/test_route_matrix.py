"""Every route × every role (and no token), generated from the OpenAPI document.

Each operation of the document is called by each role with the purpose and context that the
role's policy row would need, and the answer is checked against the tables in ``app/policy.py``:
the operation × role table (who may do it, under which purposes) and the policy table (which
rows exist, what justifies them). A route that declares no operation, or that this test has no
request for, fails the suite — so a new route cannot ship without a rule.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi.routing import RouteContext, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert

from app.access.deps import operation_of
from app.main import create_app
from app.models import Alert
from app.policy import OPERATIONS, POLICY, Justification, Operation, Purpose, Rule
from app.roles import Role
from tests import cast
from tests.access_log import events_of
from tests.conftest import SettingsFactory, login, login_client
from tests.world import (
    customer_body,
    open_visit,
    presence_of,
    purpose,
    reason_header,
    register_customer,
)

Headers = dict[str, str]
REASON = "お客様からの依頼に対応するため"
# Routes every authenticated caller (or anyone) may use: no operation to declare.
SELF_SERVICE = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/auth/token"),
    ("POST", "/auth/logout"),
    ("POST", "/auth/password"),
    ("GET", "/auth/me"),
    ("GET", "/message-templates"),  # the approved wording: no customer data
}
MEMBERS: dict[Role, cast.Member | cast.Client] = {
    Role.SALES: cast.SALES,
    Role.TECHNICIAN: cast.TECHNICIAN,
    Role.MANAGER: cast.MANAGER,
    Role.AUDITOR: cast.AUDITOR,
    Role.ADMIN: cast.ADMIN,
    Role.BILLING_SYSTEM: cast.BILLING,
    Role.FRAUD_SYSTEM: cast.FRAUD,
}
_counter = itertools.count(1)


class Logins(dict[Role, Headers]):
    """Each role's bearer headers, logged in on first use."""

    def __init__(self, client: TestClient) -> None:
        super().__init__()
        self.client = client

    def __missing__(self, role: Role) -> Headers:
        member = MEMBERS[role]
        headers = (
            login_client(self.client, member)
            if isinstance(member, cast.Client)
            else login(self.client, member)
        )
        self[role] = headers
        return headers


@dataclass
class World:
    """What the requests refer to: built through the API, fresh where a call consumes it.
    (The fuzz test grounds its cases in the same world.)"""

    client: TestClient
    headers: dict[Role, Headers]
    db: Engine
    customer_id: str = ""
    phone: str = ""
    visits: dict[Role, str] = field(default_factory=dict)

    def visit_for_customer(self, role: Role) -> str:
        if role not in self.visits:
            kind = "repair" if role is Role.TECHNICIAN else "new_contract"
            self.visits[role] = open_visit(self.client, self.headers[role], kind, self.customer_id)
        return self.visits[role]

    def unattached_visit(self, role: Role) -> str:
        return open_visit(self.client, self.headers[role])

    def visit_with_customer(self) -> str:
        sales = self.headers[Role.SALES]
        return open_visit(self.client, sales, "inquiry", self.customer_id)

    def alert(self) -> str:
        """An open alert, as the monitoring would have opened it."""
        now = datetime.now(UTC)
        alert_id = str(uuid.uuid4())
        with self.db.begin() as connection:
            connection.execute(
                insert(Alert).values(
                    id=alert_id,
                    rule="bulk_read",
                    actor=cast.SALES.login,
                    actor_key=cast.SALES.login,
                    role="sales",
                    store="S001",
                    subject=f"matrix-{alert_id}",
                    window_start=now,
                    status="open",
                    first_at=now,
                    last_at=now,
                    count=21,
                )
            )
        return alert_id

    def reviewable_event(self) -> str:
        """A manager's look without a visit: queued for review."""
        manager = purpose(self.headers[Role.MANAGER], "support", reason=REASON)
        response = self.client.get(f"/customers/{self.customer_id}", headers=manager)
        assert response.status_code == 200, response.text
        (event,) = events_of(self.db, response)
        return str(event.id)

    def store_visit(self) -> str:
        return open_visit(self.client, self.headers[Role.SALES])

    def contract(self) -> str:
        sales = self.headers[Role.SALES]
        body = {
            "line_number": "080-3333-4444",
            "plan": "5G ギガプラン",
            "device": {"model": "Pixel 9", "imei": "353456789012345"},
            "billing": {"payment_method": "credit_card", "account_last4": "4242"},
        }
        response = self.client.post(
            f"/customers/{self.customer_id}/contracts",
            json=body,
            headers=purpose(sales, "contract", visit=self.visit_for_customer(Role.SALES)),
        )
        assert response.status_code == 201, response.text
        contract_id: str = response.json()["id"]
        return contract_id

    def form(self) -> str:
        """A paper form of the customer, registered at a store visit (S001) by sales."""
        response = self.client.post(
            f"/visits/{self.visit_for_customer(Role.SALES)}/documents",
            json={"form_type": "repair_order", "storage_location": "cabinet-1"},
            headers=self.headers[Role.SALES],
        )
        assert response.status_code == 201, response.text
        form_id: str = response.json()["id"]
        return form_id

    def staff_id(self) -> str:
        staff = self.client.get("/staff", headers=self.headers[Role.ADMIN]).json()["items"]
        return str(next(s["id"] for s in staff if s["login"] == cast.SALES_OTHER_STORE.login))

    def pending_staff_id(self) -> str:
        body = {
            "login": f"pending{next(_counter)}",
            "display_name": "テスト 承認待ち",
            "role": "sales",
            "store": "S002",
            "password": "a-long-enough-passphrase",
        }
        response = self.client.post("/staff", json=body, headers=self.headers[Role.ADMIN])
        assert response.status_code == 201 and response.json()["pending_approval"], response.text
        return str(response.json()["id"])

    def client_id(self) -> str:
        body = {"name": f"matrix-client-{next(_counter)}", "role": "billing_system"}
        response = self.client.post("/clients", json=body, headers=self.headers[Role.ADMIN])
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def fresh_customer(self) -> str:
        """A customer of its own, for calls that change its state (suspend, erase)."""
        return register_customer(self.client, self.headers[Role.SALES]).id

    def suspended_customer(self) -> str:
        customer_id = self.fresh_customer()
        manager = purpose(self.headers[Role.MANAGER], "subject_request", reason=REASON)
        response = self.client.post(f"/customers/{customer_id}/suspend", headers=manager)
        assert response.status_code == 200, response.text
        return customer_id

    def open_request(self) -> str:
        manager = purpose(self.headers[Role.MANAGER], "subject_request", reason=REASON)
        response = self.client.post(
            f"/customers/{self.customer_id}/subject-requests",
            json={"kind": "disclosure", "channel": "store", "identity_check": "pin"},
            headers=manager,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def message(self) -> str:
        sales = self.headers[Role.SALES]
        response = self.client.post(
            f"/customers/{self.customer_id}/messages",
            json=message_body(self, Role.SALES),
            headers={
                **purpose(sales, "support", visit=self.visit_for_customer(Role.SALES)),
                "Idempotency-Key": f"matrix-{uuid.uuid4()}",
            },
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


def message_body(_world: World, role: Role) -> dict[str, Any]:
    if role is Role.BILLING_SYSTEM:  # may send procedure guidance only
        variables = {"due_date": "2026-12-25", "amount": "3980"}
        return {"channel": "sms", "template": "payment_reminder", "variables": variables}
    variables = {"inquiry_date": "2026-11-20", "summary": "ご依頼の件、確認できました。"}
    return {
        "channel": "sms",
        "template": "inquiry_follow_up",
        "variables": {**variables, "store_name": "渋谷店"},
    }


@dataclass(frozen=True)
class Call:
    """How to call a route: its path ids, its body (for a role), extra headers, and which visit
    justifies a store role."""

    ids: Callable[[World], dict[str, str]] = lambda _w: {}
    body: Callable[[World, Role], Any] | None = None
    headers: Callable[[], Headers] = dict
    visit: str = "customer"  # "customer": for the customer; "unattached": a new, empty one


def _fresh_idempotency_key() -> Headers:
    return {"Idempotency-Key": f"matrix-{uuid.uuid4()}"}


CALLS: dict[tuple[str, str], Call] = {
    ("POST", "/customers"): Call(body=lambda _w, _r: customer_body(), visit="unattached"),
    ("POST", "/customers/search"): Call(body=lambda w, _r: {"phone": w.phone}),
    ("GET", "/customers/{customer_id}"): Call(ids=lambda w: {"customer_id": w.customer_id}),
    ("PATCH", "/customers/{customer_id}"): Call(
        ids=lambda w: {"customer_id": w.customer_id}, body=lambda _w, _r: {"name": "山田 花子"}
    ),
    ("POST", "/customers/{customer_id}/contracts"): Call(
        ids=lambda w: {"customer_id": w.customer_id},
        body=lambda _w, _r: {
            "line_number": "080-5555-6666",
            "plan": "5G ギガプラン",
            "device": {"model": "Pixel 9", "imei": "353456789012346"},
            "billing": {"payment_method": "credit_card", "account_last4": "4242"},
        },
    ),
    ("PATCH", "/contracts/{contract_id}"): Call(
        ids=lambda w: {"contract_id": w.contract()}, body=lambda _w, _r: {"status": "terminated"}
    ),
    ("POST", "/customers/{customer_id}/messages"): Call(
        ids=lambda w: {"customer_id": w.customer_id},
        body=message_body,
        headers=_fresh_idempotency_key,
    ),
    ("GET", "/customers/{customer_id}/messages"): Call(
        ids=lambda w: {"customer_id": w.customer_id}
    ),
    ("GET", "/messages/{message_id}"): Call(ids=lambda w: {"message_id": w.message()}),
    ("POST", "/customers/{customer_id}/presence-code"): Call(
        ids=lambda w: {"customer_id": w.customer_id}
    ),
    ("GET", "/access-events"): Call(),
    ("GET", "/access-events/verify"): Call(),
    ("GET", "/alerts"): Call(),
    ("POST", "/alerts/{alert_id}/resolve"): Call(
        ids=lambda w: {"alert_id": w.alert()}, body=lambda _w, _r: {"note": "確認済み"}
    ),
    ("GET", "/reviews"): Call(),
    ("POST", "/reviews/{event_id}"): Call(
        ids=lambda w: {"event_id": w.reviewable_event()},
        body=lambda _w, _r: {"decision": "ok", "note": "確認済み"},
    ),
    ("GET", "/customers/{customer_id}/access-report"): Call(
        ids=lambda w: {"customer_id": w.customer_id}
    ),
    ("POST", "/customers/{customer_id}/subject-requests"): Call(
        ids=lambda w: {"customer_id": w.customer_id},
        body=lambda _w, _r: {"kind": "access_log", "channel": "mail", "identity_check": "pin"},
    ),
    ("GET", "/subject-requests"): Call(),
    ("POST", "/subject-requests/{request_id}/close"): Call(
        ids=lambda w: {"request_id": w.open_request()},
        body=lambda _w, _r: {"outcome": "fulfilled"},
    ),
    ("GET", "/customers/{customer_id}/export"): Call(ids=lambda w: {"customer_id": w.customer_id}),
    ("POST", "/customers/{customer_id}/suspend"): Call(
        ids=lambda w: {"customer_id": w.fresh_customer()}
    ),
    ("POST", "/customers/{customer_id}/resume"): Call(
        ids=lambda w: {"customer_id": w.suspended_customer()}
    ),
    ("DELETE", "/customers/{customer_id}"): Call(ids=lambda w: {"customer_id": w.fresh_customer()}),
    ("POST", "/visits"): Call(body=lambda _w, _r: {"type": "inquiry"}),
    ("GET", "/visits"): Call(),
    ("GET", "/visits/{visit_id}"): Call(ids=lambda w: {"visit_id": w.store_visit()}),
    ("PATCH", "/visits/{visit_id}"): Call(
        ids=lambda w: {"visit_id": w.store_visit()}, body=lambda _w, _r: {"notes": "再来店予定"}
    ),
    ("POST", "/visits/{visit_id}/close"): Call(ids=lambda w: {"visit_id": w.store_visit()}),
    ("POST", "/visits/{visit_id}/presence"): Call(
        ids=lambda w: {"visit_id": w.visit_with_customer()},
        body=lambda w, _r: {"presence": presence_of(w.customer_id)},
    ),
    ("POST", "/visits/{visit_id}/documents"): Call(
        ids=lambda w: {"visit_id": w.visit_for_customer(Role.SALES)},
        body=lambda _w, _r: {"form_type": "identity_copy", "storage_location": "cabinet-2"},
    ),
    ("GET", "/documents"): Call(),
    ("POST", "/documents/{document_id}/dispose"): Call(
        ids=lambda w: {"document_id": w.form()},
        body=lambda _w, _r: {
            "method": "shredded",
            "reason": "保管期間内だが原本を顧客に返却したため",
        },
    ),
    ("POST", "/stores"): Call(
        body=lambda _w, _r: {
            "code": f"M{next(_counter):03d}",
            "name": "マトリクス店",
            "opening_hours": {"open": "10:00", "close": "20:00"},
        }
    ),
    ("GET", "/stores"): Call(),
    ("POST", "/staff"): Call(
        body=lambda _w, _r: {
            "login": f"matrix{next(_counter)}",
            "display_name": "テスト 太郎",
            "role": "sales",
            "store": "S002",
            "password": "a-long-enough-passphrase",
        }
    ),
    ("GET", "/staff"): Call(),
    ("PATCH", "/staff/{staff_id}"): Call(
        ids=lambda w: {"staff_id": w.staff_id()}, body=lambda _w, _r: {"display_name": "表示名"}
    ),
    ("POST", "/clients"): Call(
        body=lambda _w, _r: {"name": f"matrix-new-{next(_counter)}", "role": "billing_system"}
    ),
    ("GET", "/clients"): Call(),
    ("PATCH", "/clients/{client_id}"): Call(
        ids=lambda w: {"client_id": w.client_id()}, body=lambda _w, _r: {"active": True}
    ),
    ("POST", "/clients/{client_id}/secret"): Call(ids=lambda w: {"client_id": w.client_id()}),
    ("POST", "/staff/{staff_id}/approve"): Call(ids=lambda w: {"staff_id": w.pending_staff_id()}),
    ("POST", "/clients/{client_id}/approve"): Call(ids=lambda w: {"client_id": w.client_id()}),
}


def _routes(client: TestClient) -> dict[tuple[str, str], RouteContext]:
    routes: dict[tuple[str, str], RouteContext] = {}
    for route in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        for method in route.methods or ():
            routes[(method, route.path)] = route
    return routes


def _documented(client: TestClient) -> list[tuple[str, str]]:
    document = client.get("/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "patch", "put", "delete"}
    )


def row_for(role: Role, operation: Operation) -> tuple[Purpose | None, Rule | None]:
    """The purpose under which ``role`` may do ``operation`` (and its row), or what to send to be
    refused."""
    op = OPERATIONS[operation]
    if op.purposes is None:
        return None, None
    for candidate in sorted(op.purposes):
        rule = POLICY[role].get(candidate)
        if role in op.roles and rule is not None and op.requires <= rule.groups:
            return candidate, rule
    return sorted(op.purposes)[0], None


def _expect_allowed(role: Role, operation: Operation, rule: Rule | None) -> bool:
    op = OPERATIONS[operation]
    return role in op.roles and (op.purposes is None or rule is not None)


def admitted_roles(operation: Operation) -> list[Role]:
    """The roles that may do ``operation`` under some purpose (in ``Role`` order)."""
    return [role for role in Role if _expect_allowed(role, operation, row_for(role, operation)[1])]


def context_headers(world: World, role: Role, call: Call, operation: Operation) -> Headers:
    headers = {**world.headers[role], **call.headers()}
    chosen, rule = row_for(role, operation)
    if chosen is None:
        return headers
    headers["X-Access-Purpose"] = chosen.value
    if rule is None:
        return headers
    # What the row needs (operations that need less, like search, ignore the rest).
    needs = rule.justification
    if needs in (Justification.VISIT, Justification.REPAIR_VISIT) or (
        needs is Justification.VISIT_OR_REASON and call.visit == "unattached"
    ):
        headers["X-Visit-Id"] = (
            world.unattached_visit(role)
            if call.visit == "unattached"
            else world.visit_for_customer(role)
        )
    elif needs in (Justification.REASON, Justification.VISIT_OR_REASON):
        headers["X-Access-Reason"] = reason_header(REASON)
    return headers


def test_every_documented_route_declares_a_rule_and_has_a_call(client: TestClient) -> None:
    routes = _routes(client)
    missing = []
    for key in _documented(client):
        if key in SELF_SERVICE:
            continue
        if operation_of(routes[key]) is None:
            missing.append(f"{key}: no operation declared (AccessTo / PrincipalFor)")
        if key not in CALLS:
            missing.append(f"{key}: no request in this test's CALLS")
    assert not missing, "\n".join(missing)


def test_every_route_answers_every_role_as_the_tables_say(
    make_settings: SettingsFactory, db: Engine
) -> None:
    # Every role messages the same customer: a daily cap the walk does not reach.
    with TestClient(create_app(make_settings(message_daily_cap=100))) as client:
        _walk(client, db)


def _walk(client: TestClient, db: Engine) -> None:
    world = World(client, Logins(client), db)
    headers = world.headers
    registered = register_customer(client, headers[Role.SALES], seed=77)
    world.customer_id, world.phone = registered.id, registered.body["phone"]
    routes = _routes(client)
    failures: list[str] = []
    for key in _documented(client):
        if key in SELF_SERVICE:
            continue
        method, template = key
        operation = operation_of(routes[key])
        assert operation is not None
        call = CALLS[key]

        def send(
            request_headers: Headers,
            role: Role = Role.SALES,
            method: str = method,
            template: str = template,
            call: Call = call,
        ) -> Any:
            path = template.format(**call.ids(world))
            body = call.body(world, role) if call.body is not None else None
            return client.request(method, path, json=body, headers=request_headers)

        anonymous = send(call.headers())
        if anonymous.status_code != 401:
            failures.append(f"{key} without a token: {anonymous.status_code}")
        for role in Role:
            chosen, rule = row_for(role, operation)
            response = send(context_headers(world, role, call, operation), role)
            where = f"{key} as {role.value} ({chosen.value if chosen else 'no purpose'})"
            if _expect_allowed(role, operation, rule):
                if not 200 <= response.status_code < 300:
                    failures.append(f"{where}: expected success, got {response.text[:160]}")
            elif response.status_code != 403:
                failures.append(f"{where}: expected 403, got {response.status_code}")
            elif not any(e.outcome == "denied" for e in events_of(db, response)):
                failures.append(f"{where}: 403 without a denied event")
    assert not failures, "\n".join(failures)


def test_an_unknown_customer_is_403_for_the_refused_and_404_only_for_the_admitted(
    client: TestClient, db: Engine
) -> None:
    unknown = str(uuid.uuid4())
    manager = purpose(login(client, cast.MANAGER), "support", reason=REASON)
    assert client.get(f"/customers/{unknown}", headers=manager).status_code == 404
    for member, purpose_name in ((cast.SALES, "support"), (cast.ADMIN, "audit")):
        refused = client.get(
            f"/customers/{unknown}", headers=purpose(login(client, member), purpose_name)
        )
        assert refused.status_code == 403
