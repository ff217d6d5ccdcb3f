"""The access query: in one round trip, is the caller's token still good, does the visit justify
the access, and the customer with its wrapped keys (and contracts, when they will be disclosed)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    exists,
    false,
    literal,
    or_,
    select,
)

from app.auth.repository import principal_check_clause, principal_params
from app.auth.tokens import Principal
from app.crypto import KeyScope
from app.db import DriverQuery, Reads, fetch_on_driver, runs_on_driver
from app.models import Contract, Customer, CustomerKey, Store, SubjectRequest, Visit


def visit_is_open(now: datetime) -> ColumnElement[bool]:
    return and_(
        Visit.closed_at.is_(None),
        or_(Visit.auto_close_at.is_(None), Visit.auto_close_at > now),
    )


@dataclass(frozen=True, slots=True)
class VisitCheck:
    """The visit that must justify an access: open, at the caller's store, for this customer
    (or, to register a new customer, for none yet), and of type repair where required. A repair
    visit stays open for weeks: unless the view is one it justifies while open
    (``presence_since`` None), it justifies only after a proof of presence since then."""

    visit_id: str
    store_id: str | None
    repair_only: bool = False
    for_new_customer: bool = False
    presence_since: datetime | None = None


@functools.cache
def _visit_justifies(
    repair_only: bool, for_new_customer: bool, presence_window: bool
) -> ColumnElement[bool]:
    return exists().where(
        Visit.id == bindparam("v_id"),
        Visit.store_id == bindparam("v_store"),
        Visit.closed_at.is_(None),
        or_(Visit.auto_close_at.is_(None), Visit.auto_close_at > bindparam("v_now")),
        Visit.customer_id.is_(None) if for_new_customer else Visit.customer_id == bindparam("c_id"),
        *([Visit.type == "repair"] if repair_only else []),
        *(
            [or_(Visit.type != "repair", Visit.presence_at > bindparam("v_presence_since"))]
            if presence_window
            else []
        ),
    )


@dataclass(frozen=True, slots=True)
class RequestCheck:
    """The customer request that must justify an access: open, for this customer, at the
    caller's store, and of one of ``kinds`` (those covering the operation)."""

    request_id: str
    store_id: str | None
    kinds: tuple[str, ...]


@functools.cache
def _request_justifies(kinds: tuple[str, ...]) -> ColumnElement[bool]:
    if not kinds:
        return false()
    return exists().where(
        SubjectRequest.id == bindparam("r_id"),
        SubjectRequest.store_id == bindparam("r_store"),
        SubjectRequest.customer_id == bindparam("c_id"),
        SubjectRequest.status == "open",
        # Not ``in_``: its list is expanded at execution, which the driver path does not do.
        or_(*(SubjectRequest.kind == kind for kind in kinds)),
    )


def wrapped_key(scope: KeyScope) -> ColumnElement[bytes | None]:
    return (
        select(CustomerKey.wrapped_key)
        .where(CustomerKey.customer_id == Customer.id, CustomerKey.scope == scope.value)
        .scalar_subquery()
    )


_Model = TypeVar("_Model", Customer, Contract)

_CUSTOMER_COLUMNS = tuple(Customer.__table__.columns)
_CONTRACT_COLUMNS = tuple(Contract.__table__.columns)


@functools.cache
def _access_statement(
    kind: str,
    has_store: bool,
    visit: tuple[bool, bool, bool] | None,
    with_contracts: bool,
    request_kinds: tuple[str, ...] | None = None,
    columns: bool = False,
) -> Select[Any]:
    """Built once per shape: the values travel as bound parameters. ``columns``: the customer's
    and contracts' plain columns instead of ORM entities (for the driver: ``detached``)."""

    one = select(literal(1).label("one")).subquery("one")
    verified_store = (
        select(Store.code).where(Store.id == Customer.document_verified_store_id).scalar_subquery()
    )
    visit_ok = false() if visit is None else _visit_justifies(*visit)
    if request_kinds is not None:
        # Either justification, never both: one verdict column.
        visit_ok = _request_justifies(request_kinds)
    statement = (
        select(
            principal_check_clause(kind, has_store).label("principal_ok"),
            visit_ok.label("visit_ok"),
            *(_CUSTOMER_COLUMNS if columns else (Customer,)),
            wrapped_key(KeyScope.IDENTITY),
            wrapped_key(KeyScope.PROFILE),
            verified_store,
        )
        .select_from(one)
        .outerjoin(Customer, Customer.id == bindparam("c_id"))
    )
    if with_contracts:
        statement = (
            statement.add_columns(*(_CONTRACT_COLUMNS if columns else (Contract,)))
            .outerjoin(Contract, Contract.customer_id == Customer.id)
            .order_by(Contract.started_on.desc(), Contract.created_at.desc())
        )
    return statement


@dataclass(frozen=True, slots=True)
class AccessRow:
    principal_ok: bool
    visit_ok: bool
    customer: Customer | None
    identity_key: bytes | None
    profile_key: bytes | None
    verified_store: str | None
    contracts: list[Contract]


# What the access statement is built for: caller kind, has a store, the visit rule, contracts,
# the request kinds (``_access_statement``'s arguments).
_Shape = tuple[str, bool, tuple[bool, bool, bool] | None, bool, tuple[str, ...] | None]


def _shape(
    principal: Principal,
    visit: VisitCheck | None,
    with_contracts: bool,
    request: RequestCheck | None,
) -> _Shape:
    return (
        principal.kind,
        principal.store_id is not None,
        None
        if visit is None
        else (visit.repair_only, visit.for_new_customer, visit.presence_since is not None),
        with_contracts,
        None if request is None else request.kinds,
    )


@functools.cache
def _driver_query(shape: _Shape) -> DriverQuery:
    return DriverQuery.compile(_access_statement(*shape, columns=True))


def _detached(model: type[_Model], keys: tuple[str, ...], values: Sequence[Any]) -> _Model:
    """An instance holding ``values`` as if loaded, in no session: reading it costs what
    reading a loaded row does; a change to it is never saved."""
    instance: _Model = model.__mapper__.class_manager.new_instance()
    instance.__dict__.update(zip(keys, values, strict=True))
    return instance


def _keys(
    model: type[Customer | Contract], columns: Sequence[ColumnElement[Any]]
) -> tuple[str, ...]:
    mapper = model.__mapper__
    return tuple(mapper.get_property_by_column(column).key for column in columns)


_CUSTOMER_KEYS = _keys(Customer, _CUSTOMER_COLUMNS)
_CONTRACT_KEYS = _keys(Contract, _CONTRACT_COLUMNS)


def _detached_row(rows: Sequence[Sequence[Any]], with_contracts: bool) -> AccessRow:
    first = rows[0]
    n = len(_CUSTOMER_KEYS)
    customer_values = first[2 : 2 + n]
    contract_at = 2 + n + 3
    return AccessRow(
        principal_ok=bool(first[0]),
        visit_ok=bool(first[1]),
        customer=None
        if customer_values[0] is None
        else _detached(Customer, _CUSTOMER_KEYS, customer_values),
        identity_key=first[2 + n],
        profile_key=first[3 + n],
        verified_store=first[4 + n],
        contracts=[
            _detached(Contract, _CONTRACT_KEYS, row[contract_at:])
            for row in rows
            if row[contract_at] is not None
        ]
        if with_contracts
        else [],
    )


async def load_for_access(
    reads: Reads,
    principal: Principal,
    customer_id: str,
    *,
    visit: VisitCheck | None,
    now: datetime,
    with_contracts: bool = False,
    request: RequestCheck | None = None,
    detached: bool = False,
) -> AccessRow:
    """One round trip: is the token still good, does the visit (or the customer request)
    justify the access, and the customer with its wrapped keys (and contracts, when they will
    be disclosed). ``visit_ok`` is the verdict of whichever justification was given.

    ``detached``: for an operation that changes nothing — on PostgreSQL the query runs on the
    driver directly, outside any transaction when it is the request's first (one round trip,
    no ORM; on the process's snapshot reads, no session needed), and the customer and
    contracts come as detached copies that are never saved."""
    shape = _shape(principal, visit, with_contracts, request)
    params = {**principal_params(principal), "c_id": customer_id}
    if request is not None and request.kinds:
        params.update(r_id=request.request_id, r_store=request.store_id)
    if visit is not None:
        params.update(v_id=visit.visit_id, v_store=visit.store_id, v_now=now)
        if visit.presence_since is not None:
            params["v_presence_since"] = visit.presence_since
    snapshot = reads.snapshot_reads
    if detached and (snapshot is not None or runs_on_driver(reads.session)):
        query = _driver_query(shape)
        fetched = (
            await fetch_on_driver(reads.session, query, params)
            if snapshot is None
            else await snapshot.fetch(query.sql, query.arguments(params))
        )
        return _detached_row(fetched, with_contracts)
    rows = (await reads.session.execute(_access_statement(*shape), params)).all()
    first = rows[0]
    return AccessRow(
        principal_ok=bool(first[0]),
        visit_ok=bool(first[1]),
        customer=first[2],
        identity_key=first[3],
        profile_key=first[4],
        verified_store=first[5],
        contracts=[row[6] for row in rows if row[6] is not None] if with_contracts else [],
    )
