"""Bulk seeding: rows built by the service's own code, written in bulk.

Customers are built by ``app.customers.service.add_customer`` itself (fields sealed under fresh
per-customer data keys wrapped by the run's master key, blind indexes, PIN and document hashes,
consent history) against a session that only collects the ORM objects it is given; their
contracts are sealed by ``seal_contract_field`` as ``open_contract`` seals them. Access events are
sealed by the audit log's own ``_rows`` and their chains registered and headed with the log's own
MACs. Messages are rendered by the catalogue's ``render`` and sealed under the customer's profile
key as ``send_message`` seals them. The rows are then written with ``COPY`` (PostgreSQL) or one
``executemany`` per table (SQLite), never through the API.

Large cohorts are shared out between processes, each building and writing its own slice.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from multiprocessing import get_context
from typing import Any

import psycopg
from faker import Faker
from sqlalchemy import Table, insert, inspect, text
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import make_url

from app.audit.chain import AuditKeys
from app.audit.events import Action, Actor, EventDraft
from app.audit.repository import _Chain, _rows
from app.config import Settings
from app.crypto import FieldCipher, KeyScope
from app.customers.catalogue import seal_contract_field
from app.customers.schemas import ConsentsIn, CustomerCreate, IdentityDocumentIn
from app.customers.service import add_customer
from app.db import create_sync_engine, is_sqlite
from app.keys import load_keys
from app.messages.catalog import CATALOG
from app.messages.rendering import render
from app.messages.rules import Channel
from app.models import (
    AccessEvent,
    AccessEventCustomer,
    AuditChain,
    AuditChainRegistry,
    Base,
    Contract,
    Message,
    Visit,
)
from app.models.base import new_id
from app.policy import Purpose, Role, rule_for
from app.presence.proofs import weak_pin_reason
from app.runtime import Runtime
from app.shred_keys import FIRST_VERSION
from app.validation.documents import DocumentType
from app.visits.rules import VisitType, auto_close_at

CHUNK = 5_000  # rows built and written per transaction
EVENT_CHAINS = 8  # bulk events spread over this many chains (as one process's log does)
URGENT_TEMPLATE = "service_outage"

# --- writing rows ---------------------------------------------------------------------------------


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` would read."""
    return Settings.model_validate(
        {
            k.removeprefix("SHOPVAULT_").lower(): v
            for k, v in env.items()
            if k.startswith("SHOPVAULT_")
        }
    )


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@cache
def _plan(cls: type[Any]) -> tuple[tuple[str, str, Any], ...]:
    """(column, attribute, default) for each column of a mapped class, worked out once."""
    mapper = inspect(cls)
    return tuple(
        (column.name, mapper.get_property_by_column(column).key, column.default)
        for column in mapper.local_table.columns
    )


def row_of(obj: Any) -> dict[str, Any]:
    """Every column of an ORM object as the flush would write it (Python-side defaults included)."""
    state = obj.__dict__
    row: dict[str, Any] = {}
    for name, key, default in _plan(type(obj)):
        if key in state:
            row[name] = state[key]
        elif default is not None and default.is_callable:
            row[name] = default.arg(None)
        elif default is not None and default.is_scalar:
            row[name] = default.arg
        else:
            row[name] = None
    return row


def rows_by_table(objects: Iterable[Any]) -> dict[Table, list[dict[str, Any]]]:
    grouped: dict[Table, list[dict[str, Any]]] = defaultdict(list)
    for obj in objects:
        grouped[obj.__table__].append(row_of(obj))
    return grouped


class Writer:
    """Writes rows to one database: ``COPY`` on PostgreSQL, ``executemany`` on SQLite; the
    tables in foreign-key order, one transaction per ``write``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        if self.sqlite:
            self._engine = create_sync_engine(url)
        else:
            self._connection = psycopg.connect(libpq_url(url))
            self._dialect = PGDialect_psycopg()
            self._skip_triggers()

    def _skip_triggers(self) -> None:
        """Rows built by the service are consistent by construction: like ``pg_restore
        --disable-triggers``, skip the per-row foreign-key and trigger checks while loading
        (a third less time in PostgreSQL). Only a superuser may; others load with them."""
        try:
            self._connection.execute("SET session_replication_role = replica")
            self._connection.commit()
        except psycopg.errors.InsufficientPrivilege:
            self._connection.rollback()

    def close(self) -> None:
        if self.sqlite:
            self._engine.dispose()
        else:
            self._connection.close()

    def write(self, grouped: dict[Table, list[dict[str, Any]]]) -> None:
        ordered = [t for t in Base.metadata.sorted_tables if grouped.get(t)]
        ordered += [t for t in grouped if grouped[t] and t not in ordered]  # the bare app's
        if self.sqlite:
            with self._engine.begin() as connection:
                for table in ordered:
                    connection.execute(insert(table), grouped[table])
            return
        with self._connection.transaction(), self._connection.cursor() as cursor:
            for table in ordered:
                self._copy(cursor, table, grouped[table])

    def _copy(self, cursor: psycopg.Cursor[Any], table: Table, rows: list[dict[str, Any]]) -> None:
        columns = list(table.columns)
        # The column types' own bind processing (UTC datetimes, JSON), as an INSERT would do.
        processors = [
            c.type.dialect_impl(self._dialect).bind_processor(self._dialect) for c in columns
        ]
        names = ", ".join(f'"{c.name}"' for c in columns)
        with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(
                    [
                        p(row[c.name]) if p is not None else row[c.name]
                        for c, p in zip(columns, processors, strict=True)
                    ]
                )


@contextmanager
def writer(url: str) -> Iterator[Writer]:
    w = Writer(url)
    try:
        yield w
    finally:
        w.close()


def count_events(url: str) -> int:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM access_event")).scalar_one())
    finally:
        engine.dispose()


def analyze(url: str) -> None:
    """After a bulk load, what autovacuum would have done long before a chain's database held
    these rows (it is off on this machine's PostgreSQL): fresh planner statistics, and on
    PostgreSQL the rows' hint bits and the visibility map (``VACUUM``), so that no app measured
    first pays for being the first to read freshly loaded rows."""
    if is_sqlite(url):
        engine = create_sync_engine(url)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")
        finally:
            engine.dispose()
        return
    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE)")


# --- synthetic customers -------------------------------------------------------------------------


@cache
def _pools() -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """Entirely synthetic names (with their kana) and addresses (Faker ja_JP), drawn once and
    combined by index with the values each customer has of their own."""
    faker = Faker("ja_JP")
    faker.seed_instance(12)
    names = []
    for _ in range(2_000):
        (family, family_kana), (given, given_kana) = (
            faker.last_name_pair()[:2],
            faker.first_name_pair()[:2],
        )
        names.append((f"{family} {given}", f"{family_kana} {given_kana}"))
    addresses = [faker.address().replace("\n", " ")[:100] for _ in range(500)]
    postal = [faker.zipcode() for _ in range(499)]
    return names, addresses, postal


def phone_of(index: int) -> str:
    """A distinct mobile number per customer index, in the national form staff type."""
    prefix = ("090", "080", "070")[index // 90_000_000 % 3]
    return f"{prefix}-{1000 + index // 10_000 % 9000:04d}-{index % 10_000:04d}"


def customer_body(index: int) -> dict[str, Any]:
    rng = random.Random(index)
    names, addresses, postal = _pools()
    name, kana = names[index % len(names)]
    birth = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 65))
    phone = phone_of(index)
    e164 = "+81" + phone.replace("-", "")[1:]
    pin = f"{rng.randrange(10_000):04d}"
    while weak_pin_reason(pin, date_of_birth=birth, phone_e164=e164) is not None:
        pin = f"{rng.randrange(10_000):04d}"
    return {
        "name": name,
        "name_kana": kana,
        "date_of_birth": birth.isoformat(),
        "postal_code": postal[index % len(postal)],
        "address": addresses[index % len(addresses)],
        "phone": phone,
        "email": f"customer{index}@example.jp",
        "identity_document": {"type": "drivers_license", "number": f"{rng.randrange(10**12):012d}"},
        "consents": {"marketing_email": index % 2 == 0, "marketing_sms": index % 3 == 0},
        "pin": pin,
    }


POOLED = ("name", "name_kana", "postal_code", "address")
CHECK_EVERY = 997  # a constructed body is compared with the schema's own result this often


class Bodies:
    """Registration bodies as ``CustomerCreate`` makes them. The schema validates every body
    whose pooled values (name, kana, address, postal code) it has not seen yet; the others are
    put together from the values it answered before and the per-customer values in the form it
    gives them (phone in E.164, the rest as generated) — and compared with the schema's own
    result every ``CHECK_EVERY`` customers, so that a change of the schema cannot go unseen."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], Any] = {}

    def make(self, index: int) -> tuple[dict[str, Any], CustomerCreate]:
        raw = customer_body(index)
        try:
            pooled = {name: self._seen[(name, raw[name])] for name in POOLED}
        except KeyError:
            body = CustomerCreate.model_validate(raw)
            self._seen.update({(name, raw[name]): getattr(body, name) for name in POOLED})
            return raw, body
        document = raw["identity_document"]
        body = CustomerCreate.model_construct(
            **pooled,
            date_of_birth=date.fromisoformat(raw["date_of_birth"]),
            phone="+81" + raw["phone"].replace("-", "")[1:],
            email=raw["email"],
            identity_document=IdentityDocumentIn.model_construct(
                type=DocumentType(document["type"]), number=document["number"]
            ),
            consents=ConsentsIn.model_construct(**raw["consents"]),
            pin=raw["pin"],
        )
        if index % CHECK_EVERY == 0:
            expected = CustomerCreate.model_validate(raw).model_dump()
            if body.model_dump() != expected:
                raise RuntimeError("bench.bulk.Bodies no longer builds what CustomerCreate does")
        return raw, body


class _Collector:
    """What ``add_customer`` takes for a session: it only collects what it is given."""

    def __init__(self) -> None:
        self.objects: list[Any] = []

    def add(self, obj: Any) -> None:
        self.objects.append(obj)

    def add_all(self, objs: Iterable[Any]) -> None:
        self.objects.extend(objs)

    async def flush(self) -> None:
        return None

    async def execute(self, _statement: Any) -> _FirstVersion:
        # The one query ``add_customer`` makes: its bucket's shred key version. The bench seeds
        # a freshly migrated database, where every bucket is at its first version.
        return _FirstVersion()


class _FirstVersion:
    def scalar_one(self) -> int:
        return FIRST_VERSION


class _Work:
    def __init__(self) -> None:
        self.session = _Collector()


@dataclass(frozen=True)
class Cohort:
    """Customers ``start .. start + count`` of the synthetic population, and what they carry:
    ``visit``: an open visit at ``store_id`` with proof of presence (what lets ``sales`` read
    them); ``contract``: one active contract; ``due``: registered, served and with their only
    contract ended long enough ago for disposal."""

    start: int
    count: int
    store_id: str
    opened_by: str
    visit: bool = False
    contract: bool = False
    due: bool = False


@dataclass(frozen=True)
class Seeded:
    customer_id: str
    phone: str  # national form, as a POS searches for it
    visit_id: str | None


def _contract(
    ciphers: Any,
    customer_id: str,
    body: CustomerCreate,
    cohort: Cohort,
    index: int,
    started_on: date,
    ended_on: date | None,
) -> Contract:
    contract_id = new_id()
    imei = f"35{index:013d}"[-15:]
    return Contract(
        id=contract_id,
        customer_id=customer_id,
        line_number_enc=seal_contract_field(ciphers, contract_id, "line_number", body.phone),
        plan="5G ギガプラン",
        status="terminated" if ended_on else "active",
        started_on=started_on,
        ended_on=ended_on,
        device_model="Pixel 9",
        imei_enc=seal_contract_field(ciphers, contract_id, "imei", imei),
        payment_method="credit_card",
        account_last4=f"{index % 10_000:04d}",
        store_id=cohort.store_id,
    )


async def _build(
    runtime: Runtime, cohort: Cohort, start: int, count: int, now: datetime
) -> tuple[list[Any], list[Seeded]]:
    work = _Work()
    seeded: list[Seeded] = []
    hours = runtime.settings.visit_auto_close_hours
    registered = now - timedelta(days=365 * 6) if cohort.due else now - timedelta(days=30)
    bodies = Bodies()
    for index in range(start, start + count):
        raw, body = bodies.make(index)
        visit_id = new_id()
        customer, ciphers = await add_customer(
            work,  # type: ignore[arg-type]
            runtime,
            body,
            store_id=cohort.store_id,
            visit_id=visit_id,
            recorded_by="bench",
            now=registered,
        )
        extra: list[Any] = []
        if cohort.contract or cohort.due:
            ended = (now - timedelta(days=365 * 4)).date() if cohort.due else None
            extra.append(
                _contract(ciphers, customer.id, body, cohort, index, registered.date(), ended)
            )
        if cohort.visit or cohort.due:
            kind = VisitType.MODEL_CHANGE
            opened = now - timedelta(days=365 * 4) if cohort.due else now
            extra.append(
                Visit(
                    id=visit_id,
                    store_id=cohort.store_id,
                    type=kind.value,
                    customer_id=customer.id,
                    opened_by=cohort.opened_by,
                    opened_at=opened,
                    auto_close_at=auto_close_at(kind, opened, hours),
                    closed_at=opened + timedelta(minutes=40) if cohort.due else None,
                    presence_at=opened,
                    presence_method="pin",
                )
            )
        work.session.objects.extend(extra)
        seeded.append(Seeded(customer.id, raw["phone"], visit_id if cohort.visit else None))
    return work.session.objects, seeded


def _build_slice(
    env: dict[str, str], cohort: Cohort, start: int, count: int, now: datetime
) -> list[Seeded]:
    """One process's share: build and write customers ``start .. start + count``."""
    runtime = Runtime.build(settings_from(env))
    out: list[Seeded] = []
    with writer(runtime.settings.resolved_database_url) as w:
        for first in range(start, start + count, CHUNK):
            n = min(CHUNK, start + count - first)
            objects, seeded = asyncio.run(_build(runtime, cohort, first, n, now))
            w.write(rows_by_table(objects))
            out.extend(seeded)
    return out


def seed_customers(env: dict[str, str], cohort: Cohort, *, processes: int = 2) -> list[Seeded]:
    """Build and write the cohort, shared out between ``processes`` (one on SQLite)."""
    now = datetime.now(UTC)
    url = settings_from(env).resolved_database_url
    processes = 1 if is_sqlite(url) or cohort.count < 2 * CHUNK else processes
    if processes == 1:
        return _build_slice(env, cohort, cohort.start, cohort.count, now)
    share = -(-cohort.count // (processes * 4))  # a few slices each, so that they even out
    slices = [
        (first, min(share, cohort.start + cohort.count - first))
        for first in range(cohort.start, cohort.start + cohort.count, share)
    ]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_build_slice, env, cohort, s, n, now) for s, n in slices]
        return [item for future in futures for item in future.result()]


# --- access events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventActor:
    login: str
    staff_id: str
    store_code: str
    terminal: str


def _event_slice(
    env: dict[str, str],
    actor: EventActor,
    customer_ids: Sequence[str],
    count: int,
    chain: str,
    start: datetime,
    step: timedelta,
) -> int:
    """One chain of ``count`` reads, sealed by the log's own ``_rows``, with its registration and
    its head, as the appends of one process's chain would have left them."""
    settings = settings_from(env)
    keys = AuditKeys.derive(load_keys(settings).index)
    who = Actor(actor.login, actor.staff_id, Role.SALES.value, actor.store_code, actor.terminal)
    rule = rule_for(Role.SALES, Purpose.CONTRACT)
    assert rule is not None
    fields = tuple(sorted(rule.groups))
    rng = random.Random(chain)
    state = _Chain(name=chain)
    first_at = start
    with writer(settings.resolved_database_url) as w:
        for first in range(0, count, CHUNK):
            events: list[dict[str, Any]] = []
            links: list[dict[str, Any]] = []
            for n in range(first, min(count, first + CHUNK)):
                cid = rng.choice(customer_ids)
                draft = EventDraft(
                    actor=who,
                    action=Action.READ,
                    resource=f"customers/{cid}",
                    purpose=Purpose.CONTRACT.value,
                    customer_ids=(cid,),
                    fields=fields,
                )
                rows, new_links, seq, head = _rows(
                    state, [draft], keys.chain, str(uuid.uuid4()), start + n * step
                )
                state.seq, state.head = seq, head
                events.extend(rows)
                links.extend(new_links)
            grouped: dict[Table, list[dict[str, Any]]] = {
                AccessEvent.__table__: [_event_columns(e) for e in events],  # type: ignore[dict-item]
                AccessEventCustomer.__table__: links,  # type: ignore[dict-item]
            }
            if first == 0:
                grouped[AuditChainRegistry.__table__] = [  # type: ignore[index]
                    {
                        "chain": chain,
                        "registered_at": first_at,
                        "mac": keys.registry_mac(chain, first_at),
                    }
                ]
            w.write(grouped)
        w.write(
            {
                AuditChain.__table__: [  # type: ignore[dict-item]
                    {
                        "chain": chain,
                        "seq": state.seq,
                        "head_hash": state.head,
                        "mac": keys.head_mac(chain, state.seq, state.head),
                    }
                ]
            }
        )
    return count


_EVENT_COLUMNS = frozenset(AccessEvent.__table__.columns.keys())


def _event_columns(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k in _EVENT_COLUMNS}


def seed_events(
    env: dict[str, str],
    actor: EventActor,
    customer_ids: Sequence[str],
    count: int,
    *,
    processes: int = 2,
) -> int:
    """``count`` read events over ``EVENT_CHAINS`` new chains, the last 30 days' worth."""
    if count <= 0:
        return 0
    now = datetime.now(UTC)
    start = now - timedelta(days=30)
    step = timedelta(days=30) / count
    tag = secrets.token_hex(6)
    chains = min(EVENT_CHAINS, count)
    shares = [count // chains + (1 if i < count % chains else 0) for i in range(chains)]
    ids = list(customer_ids)
    url = settings_from(env).resolved_database_url
    if is_sqlite(url) or processes == 1:
        return sum(
            _event_slice(env, actor, ids, n, f"bench{tag}.{i}", start, step)
            for i, n in enumerate(shares)
        )
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_event_slice, env, actor, ids, n, f"bench{tag}.{i}", start, step)
            for i, n in enumerate(shares)
        ]
        return sum(f.result() for f in futures)


# --- the bare app's rows, the outbox -----------------------------------------------------------


def seed_bare_customers(url: str, count: int) -> list[str]:
    """The bare app's customers (plain text, as a careless app keeps them); their ids."""
    from bench.bare_app import BenchCustomer

    ids: list[str] = []
    with writer(url) as w:
        for first in range(0, count, CHUNK):
            rows = []
            for index in range(first, min(count, first + CHUNK)):
                body = customer_body(index)
                cid = new_id()
                ids.append(cid)
                rows.append(
                    {
                        "id": cid,
                        "name": body["name"],
                        "name_kana": body["name_kana"],
                        "phone": body["phone"],
                        "email": body["email"],
                        "address": body["address"],
                    }
                )
            w.write({BenchCustomer.__table__: rows})  # type: ignore[dict-item]
    return ids


def _seal(cipher: FieldCipher, message_id: str, column: str, value: str) -> bytes:
    return cipher.encrypt(value, table="message", column=column, row_id=message_id)


def seed_outbox(
    env: dict[str, str], customer_ids: Sequence[str], *, manager_id: str, store_id: str
) -> list[str]:
    """One urgent important notice (a manager's, with a reason: sent at any hour) by email to
    each customer, queued as ``send_message`` queues it; the message ids."""
    settings = settings_from(env)
    runtime = Runtime.build(settings)
    template = CATALOG.get(URGENT_TEMPLATE)
    assert template is not None
    today = datetime.now(UTC).date().isoformat()
    rendered = render(
        template, Channel.EMAIL, {"outage_date": today, "start_time": "09:00", "end_time": "10:30"}
    )
    assert rendered.subject is not None
    engine = create_sync_engine(settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            keys = dict(
                connection.execute(
                    text("SELECT customer_id, wrapped_key FROM customer_key WHERE scope = :scope"),
                    {"scope": KeyScope.PROFILE.value},
                ).all()
            )
    finally:
        engine.dispose()
    now = datetime.now(UTC)
    ids: list[str] = []
    with writer(settings.resolved_database_url) as w:
        for first in range(0, len(customer_ids), CHUNK):
            messages = []
            for cid in customer_ids[first : first + CHUNK]:
                cipher = runtime.vault.open_customer(
                    cid, identity=None, profile=keys[cid]
                ).for_scope(KeyScope.PROFILE)
                message_id = new_id()
                messages.append(
                    Message(
                        id=message_id,
                        customer_id=cid,
                        kind="message",
                        channel=Channel.EMAIL.value,
                        template=template.id,
                        category=template.category.value,
                        status="queued",
                        urgent=True,
                        consent_basis="urgent_reason",
                        basis_reason="通信障害のため全お客様へ緊急のお知らせ",
                        subject_enc=_seal(cipher, message_id, "subject", rendered.subject),
                        body_enc=_seal(cipher, message_id, "body", rendered.body),
                        created_at=now,
                        created_by_id=manager_id,
                        created_by_role=Role.MANAGER.value,
                        store_id=store_id,
                        due_at=now,
                        attempts=0,
                    )
                )
                ids.append(message_id)
            w.write(rows_by_table(messages))
    return ids
