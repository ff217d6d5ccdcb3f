"""Faults underneath (PostgreSQL): the database goes away, a connection is killed in the middle
of a request, the database turns read-only. Each time the caller gets ``503`` with
``Retry-After`` and no data, nothing is half-written, and the service recovers by itself once
the database is back — no restart.

The database "goes down" behind a TCP forwarder the test cuts (the shared server keeps running
for everyone else); a connection is killed by the server itself (``pg_terminate_backend``, from a
trigger on the access log, so that it happens exactly mid-request). A failing audit insert and a
failing COMMIT are covered by ``tests/test_fail_closed.py`` and ``tests/test_unit_of_work.py`` on
both databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from app.main import create_app
from tests import cast
from tests.conftest import SettingsFactory, login
from tests.tcp_proxy import TcpProxy
from tests.test_unit_of_work import assert_unavailable
from tests.world import Registered, customer_body, open_visit, purpose, register_customer

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def _written(db: Engine) -> dict[str, int]:
    with db.connect() as connection:
        return {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("access_event", "customer", "visit")
        }


def _read(client: TestClient, headers: dict[str, str], customer: Registered) -> Any:
    return client.get(
        f"/customers/{customer.id}",
        headers=purpose(headers, "contract", visit=customer.visit_id),
    )


def _nothing_disclosed(response: Any, customer: Registered) -> None:
    for key in ("name", "phone", "address"):
        assert str(customer.body[key]) not in response.text


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    url = make_url(database_url)
    forwarder = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    forwarder.start()
    yield forwarder
    forwarder.stop()


def test_database_down_is_503_and_the_service_recovers_when_it_returns(
    make_settings: SettingsFactory, database_url: str, db: Engine, proxy: TcpProxy
) -> None:
    through_proxy = make_url(database_url).set(port=proxy.port)
    settings = make_settings(database_url=through_proxy.render_as_string(hide_password=False))
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        customer = register_customer(client, sales, seed=71)
        assert _read(client, sales, customer).status_code == 200
        before = _written(db)

        proxy.stop()
        for _ in range(3):  # the pooled connections, then new ones refused
            down = _read(client, sales, customer)
            assert_unavailable(down)
            _nothing_disclosed(down, customer)
        assert client.get("/readyz").status_code == 503
        assert client.post("/visits", json={"type": "inquiry"}, headers=sales).status_code == 503
        assert _written(db) == before

        proxy.start()
        back = _read(client, sales, customer)
        assert back.status_code == 200, back.text
        assert back.json()["name"] == customer.body["name"]
        assert client.get("/readyz").status_code == 200
    assert _written(db)["access_event"] == before["access_event"] + 1


_KILL_MID_REQUEST = [
    "CREATE FUNCTION kill_own_backend() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$",
    "CREATE TRIGGER kill_mid_request BEFORE INSERT ON access_event "
    "FOR EACH ROW EXECUTE FUNCTION kill_own_backend()",
]
_UNKILL = ["DROP TRIGGER kill_mid_request ON access_event", "DROP FUNCTION kill_own_backend()"]


def _execute(db: Engine, statements: list[str]) -> None:
    with db.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def test_a_connection_killed_mid_request_is_503_with_nothing_half_written(
    client: TestClient, db: Engine
) -> None:
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=72)
    unattached = open_visit(client, sales)
    before = _written(db)
    _execute(db, _KILL_MID_REQUEST)
    try:
        # The customer is read, then its access event is being written when the server drops
        # the connection: no data may leave. A customer is registered, then the event is being
        # written: the customer must not stay behind.
        killed = _read(client, sales, customer)
        assert_unavailable(killed)
        _nothing_disclosed(killed, customer)
        registered = client.post(
            "/customers",
            json=customer_body(seed=75),
            headers=purpose(sales, "contract", visit=unattached),
        )
        assert_unavailable(registered)
    finally:
        _execute(db, _UNKILL)
    assert _written(db) == before

    recovered = _read(client, sales, customer)
    assert recovered.status_code == 200, recovered.text


def test_backends_killed_between_requests_cost_at_most_one_503(
    client: TestClient, db: Engine, database_url: str
) -> None:
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=73)
    name = make_url(database_url).database
    with db.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        ).scalar_one()
    assert killed >= 1
    answers = [_read(client, sales, customer).status_code for _ in range(3)]
    assert answers in ([200, 200, 200], [503, 200, 200]), answers


def test_a_database_turned_read_only_is_503_and_recovers(
    client: TestClient, db: Engine, database_url: str
) -> None:
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=74)
    name = make_url(database_url).database

    def set_read_only(on: bool) -> None:
        with db.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("SET default_transaction_read_only = off"))
            connection.execute(
                text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {on}')
            )
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )

    before = _written(db)
    set_read_only(True)
    try:
        _read(client, sales, customer)  # the killed pooled connection, at most
        refused = _read(client, sales, customer)
        assert_unavailable(refused, "audit-unavailable")
        _nothing_disclosed(refused, customer)
    finally:
        set_read_only(False)
    with db.connect() as connection:
        assert _written(db) == before, connection
    _read(client, sales, customer)  # the connection killed to end read-only, at most
    assert _read(client, sales, customer).status_code == 200
