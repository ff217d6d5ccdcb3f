"""``GET /customers/{customer_id}`` is answered by its own ASGI handler
(``app/customers/read_route.py``), in front of FastAPI's router. Its declared route is the
reference: for every kind of caller and every refusal, both give the same status, the same
headers, the same body (byte for byte, but for the request id) and commit the same access
events. And the handler really is what answers: the declared route is never reached."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.audit.chain import HASHED_FIELDS
from app.config import Settings
from app.customers.read_route import CustomerReadRoute
from app.main import create_app
from app.models.base import new_id
from app.uow import UnitOfWork
from tests import cast
from tests.access_log import events_of
from tests.conftest import login, login_client
from tests.world import add_contract, open_visit, purpose, reason_header, register_customer

# What may differ between two answers to the same request: their request ids, and the length
# of a body that carries one.
_PER_REQUEST = {"x-request-id", "content-length"}
# Every hashed field of an event but those each event has of its own (its id, place in its chain,
# time and request id); the customer ids are compared beside them.
_EVENT_COLUMNS = tuple(
    name
    for name in HASHED_FIELDS
    if name not in {"id", "chain", "seq", "at", "customer_ids", "request_id", "encoding_version"}
)


@pytest.fixture
def reference(settings: Settings) -> Iterator[TestClient]:
    """The same service with the read left to its declared FastAPI route."""
    app = create_app(settings)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CustomerReadRoute]
    with TestClient(app) as test_client:
        yield test_client


def _comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    headers = sorted((k, v) for k, v in response.headers.items() if k not in _PER_REQUEST)
    if response.content and response.headers.get("content-type", "").endswith("json"):
        body = response.json()
        if isinstance(body, dict):
            body.pop("request_id", None)
    else:
        body = response.content
    return response.status_code, headers, body


def _events(db: Engine, response: httpx.Response) -> list[dict[str, Any]]:
    return [
        {
            **{column: getattr(event, column) for column in _EVENT_COLUMNS},
            "customer_ids": event.customer_ids,
        }
        for event in events_of(db, response)
    ]


def _same_answer(
    db: Engine,
    client: TestClient,
    reference: TestClient,
    method: str,
    path: str,
    headers: dict[str, str] | httpx.Headers,
    case: object,
) -> httpx.Response:
    """Send the request to the handler and to the declared route; both must answer alike and
    commit the same events. Returns the handler's answer."""
    fast, declared = (app.request(method, path, headers=headers) for app in (client, reference))
    assert _comparable(fast) == _comparable(declared), case
    assert _events(db, fast) == _events(db, declared), case
    return fast


def test_the_handler_answers_as_the_declared_route(
    client: TestClient, reference: TestClient, db: Engine
) -> None:
    sales = login(client, cast.SALES)
    manager = login(client, cast.MANAGER)
    technician = login(client, cast.TECHNICIAN)
    other_store = login(client, cast.SALES_OTHER_STORE)
    auditor = login(client, cast.AUDITOR)
    fraud = login_client(client, cast.FRAUD)
    customer = register_customer(client, sales, seed=31)
    add_contract(client, sales, customer.id, customer.visit_id, seed=1)
    add_contract(client, sales, customer.id, customer.visit_id, seed=2)
    bare = register_customer(client, sales, seed=32)  # no contracts
    repair = open_visit(client, technician, "repair", customer_id=customer.id)
    reason = "お客様からの電話での問い合わせ対応"
    token = sales["Authorization"].split()[1]

    cases: dict[str, tuple[str, dict[str, str]]] = {
        "sales in the visit": (customer.id, purpose(sales, "contract", visit=customer.visit_id)),
        "no contracts": (bare.id, purpose(sales, "contract", visit=bare.visit_id)),
        "another customer's visit": (bare.id, purpose(sales, "contract", visit=customer.visit_id)),
        "support in the visit": (customer.id, purpose(sales, "support", visit=customer.visit_id)),
        "technician, repair visit": (customer.id, purpose(technician, "repair", visit=repair)),
        "manager with a reason": (customer.id, purpose(manager, "support", reason=reason)),
        "auditor": (customer.id, purpose(auditor, "audit", reason=reason)),
        "fraud system": (customer.id, purpose(fraud, "fraud_prevention")),
        "other store's visit": (
            customer.id,
            purpose(other_store, "contract", visit=customer.visit_id),
        ),
        "no visit": (customer.id, purpose(sales, "contract")),
        "unknown visit": (customer.id, purpose(sales, "contract", visit=new_id())),
        "malformed visit": (customer.id, {**purpose(sales, "contract"), "X-Visit-Id": "v-1"}),
        "purpose not allowed": (customer.id, purpose(sales, "audit")),
        "unknown purpose": (customer.id, purpose(sales, "curiosity")),
        "no purpose": (customer.id, sales),
        "blank purpose": (customer.id, {**sales, "X-Access-Purpose": "  "}),
        "reason not encoded": (
            customer.id,
            {**purpose(manager, "support"), "X-Access-Reason": "\x7f" * 12},
        ),
        "reason too short": (
            customer.id,
            {**purpose(manager, "support"), "X-Access-Reason": reason_header("短い")},
        ),
        "no token": (customer.id, {"X-Access-Purpose": "contract"}),
        "not a bearer token": (
            customer.id,
            {"Authorization": f"Basic {token}", "X-Access-Purpose": "contract"},
        ),
        "lower-case scheme": (
            customer.id,
            {
                **purpose(sales, "contract", visit=customer.visit_id),
                "Authorization": f"bearer {token}",
            },
        ),
        "forged token": (
            customer.id,
            {
                **purpose(sales, "contract", visit=customer.visit_id),
                "Authorization": f"Bearer {token[:-4]}AAAA",
            },
        ),
        "no such customer": (new_id(), purpose(sales, "contract", visit=customer.visit_id)),
        "auditor, no such customer": (new_id(), purpose(auditor, "audit", reason=reason)),
        "malformed customer id": ("not-an-id", purpose(sales, "contract", visit=customer.visit_id)),
        "upper-case customer id": (
            customer.id.upper(),
            purpose(sales, "contract", visit=customer.visit_id),
        ),
        "search, by GET": ("search", purpose(sales, "contract", visit=customer.visit_id)),
    }
    seen: set[int] = set()
    for name, (customer_id, headers) in cases.items():
        path = f"/customers/{customer_id}"
        seen.add(_same_answer(db, client, reference, "GET", path, headers, name).status_code)
    assert {200, 400, 401, 403, 404} <= seen


def test_repeated_access_headers_count_as_the_declared_route_counts_them(
    client: TestClient, reference: TestClient, db: Engine
) -> None:
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=33)
    good = purpose(sales, "contract", visit=customer.visit_id)
    variants = {
        "purpose twice": [("X-Access-Purpose", "audit")],
        "visit twice": [("X-Visit-Id", new_id())],
        "token twice": [("Authorization", "Bearer x")],
    }
    for name, extra in variants.items():
        for first in (True, False):
            pairs = list(good.items())
            headers = httpx.Headers([*extra, *pairs] if first else [*pairs, *extra])
            path = f"/customers/{customer.id}"
            _same_answer(db, client, reference, "GET", path, headers, (name, first))


def test_the_handler_is_what_answers(
    client: TestClient, reference: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=34)
    answered: list[str] = []
    original = CustomerReadRoute._answer

    async def counted(self: CustomerReadRoute, request: Any, customer_id: str) -> Any:
        answered.append(customer_id)
        return await original(self, request, customer_id)

    monkeypatch.setattr(CustomerReadRoute, "_answer", counted)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    assert client.get(f"/customers/{customer.id}", headers=headers).status_code == 200
    assert answered == [customer.id]
    assert reference.get(f"/customers/{customer.id}", headers=headers).status_code == 200
    assert answered == [customer.id]


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE", "HEAD"])
def test_other_methods_and_paths_pass_through(
    client: TestClient, reference: TestClient, db: Engine, method: str
) -> None:
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=35)
    headers = purpose(sales, "contract", visit=customer.visit_id)
    for path in (f"/customers/{customer.id}", f"/customers/{customer.id}/", "/customers/"):
        _same_answer(db, client, reference, method, path, headers, (method, path))


def test_the_read_makes_no_session_on_postgres(
    client: TestClient, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the read's one query runs on the process's snapshot reads, outside any
    transaction: no session is made for it, and its events go to the group commit."""
    if backend != "postgres":
        pytest.skip("the snapshot reads are PostgreSQL's")
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=36)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    made: list[UnitOfWork] = []
    session_of = UnitOfWork.session

    def recorded(uow: UnitOfWork) -> Any:
        made.append(uow)
        return session_of.fget(uow)  # type: ignore[attr-defined]

    monkeypatch.setattr(UnitOfWork, "session", property(recorded))
    before = runtime.group_commit.batches
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=customer.visit_id)
    )
    assert response.status_code == 200, response.text
    assert made == []
    assert runtime.group_commit.batches == before + 1
    # A read that is refused commits its refusal in a transaction of its own.
    refused = client.get(f"/customers/{customer.id}", headers=purpose(sales, "contract"))
    assert refused.status_code == 403
    assert len(made) >= 1


def test_a_dependency_the_handler_does_not_replace_stops_the_app(settings: Settings) -> None:
    """The handler runs what the declared route depends on; a route that depended on anything
    more would be answered without it, so the app refuses to start that way."""
    from fastapi import Depends, FastAPI
    from fastapi.routing import APIRoute

    from app.customers.read_route import declared_route

    declared = declared_route()

    async def audit_something() -> None:
        return None

    extra = APIRoute(
        declared.path,
        declared.endpoint,
        methods=["GET"],
        dependencies=[Depends(audit_something)],
    )
    app = create_app(settings)
    assert isinstance(app, FastAPI)
    with pytest.raises(LookupError):
        CustomerReadRoute(app, runtime=app.state.runtime, route=extra)
    CustomerReadRoute(app, runtime=app.state.runtime, route=declared)
