"""The hot read on PostgreSQL (``load_for_access(detached=True)``): the same query run on the
driver directly, outside any transaction (on the process's snapshot reads, or on the session's
connection), with the rows as detached copies. It must answer exactly what the ORM path
answers — for a customer with contracts, for no such customer, for a visit that does not
justify the access — and never hand back anything a session would save."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.repository import AccessRow, VisitCheck, _driver_query, load_for_access
from app.db import SnapshotReads
from app.models import Contract, Customer
from app.models.base import new_id, utcnow
from app.policy import Operation, request_kinds_covering
from tests import cast
from tests.conftest import login
from tests.world import add_contract, register_customer


@pytest.fixture
def postgres(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("the driver path is PostgreSQL's (SQLite reads through the ORM)")


def _plain(row: AccessRow) -> dict[str, Any]:
    def columns(instance: Customer | Contract | None) -> dict[str, Any] | None:
        if instance is None:
            return None
        return {c.key: getattr(instance, c.key) for c in inspect(type(instance)).column_attrs}

    return {
        "principal_ok": row.principal_ok,
        "visit_ok": row.visit_ok,
        "customer": columns(row.customer),
        "identity_key": row.identity_key,
        "profile_key": row.profile_key,
        "verified_store": row.verified_store,
        "contracts": [columns(c) for c in row.contracts],
    }


@dataclass
class _Reads:
    session: AsyncSession
    snapshot_reads: SnapshotReads | None


@pytest.mark.usefixtures("postgres")
def test_the_driver_path_answers_what_the_orm_path_answers(client: TestClient) -> None:
    sales = login(client, cast.SALES)
    customer = register_customer(client, sales, seed=7)
    add_contract(client, sales, customer.id, customer.visit_id, seed=1)
    add_contract(client, sales, customer.id, customer.visit_id, seed=2)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    principal = runtime.tokens.decode(sales["Authorization"].split()[1])
    now = utcnow()
    good = VisitCheck(
        customer.visit_id, principal.store_id, presence_since=now - timedelta(hours=1)
    )
    wrong = VisitCheck(new_id(), principal.store_id)

    assert runtime.snapshot_reads is not None

    async def each(customer_id: str, visit: VisitCheck) -> tuple[AccessRow, ...]:
        async with runtime.sessions() as session:
            answers = []
            # On the snapshot reads (no session touched), on the session's own connection,
            # and through the ORM.
            for reads, detached in (
                (_Reads(session, runtime.snapshot_reads), True),
                (_Reads(session, None), True),
                (_Reads(session, None), False),
            ):
                answers.append(
                    await load_for_access(
                        reads,
                        principal,
                        customer_id,
                        visit=visit,
                        now=now,
                        with_contracts=True,
                        detached=detached,
                    )
                )
            for detached_row in answers[:2]:
                assert detached_row.customer is None or detached_row.customer not in session
                assert all(c not in session for c in detached_row.contracts)
            return tuple(answers)

    for customer_id, visit in ((customer.id, good), (new_id(), good), (customer.id, wrong)):
        snapshot, on_session, loaded = client.portal.call(each, customer_id, visit)  # type: ignore[union-attr]
        assert _plain(snapshot) == _plain(loaded)
        assert _plain(on_session) == _plain(loaded)
    detached, _, _ = client.portal.call(each, customer.id, good)  # type: ignore[union-attr]
    assert detached.principal_ok and detached.visit_ok
    assert detached.customer is not None and detached.customer.id == customer.id
    assert len(detached.contracts) == 2


def test_every_shape_of_the_access_query_compiles_for_the_driver() -> None:
    """Each shape the pipeline can ask for (caller kind, store, visit rule, contracts, the
    request kinds of every operation) is plain ``$n`` SQL: nothing left to expand at execution,
    which only SQLAlchemy's own execution would do."""
    kinds = {request_kinds_covering(operation) for operation in Operation}
    visits = [None, *itertools.product((False, True), repeat=3)]
    shapes = itertools.product(
        ("staff", "system"), (False, True), visits, (False, True), [None, *kinds]
    )
    for shape in shapes:
        query = _driver_query(shape)  # type: ignore[arg-type]
        assert "POSTCOMPILE" not in query.sql
