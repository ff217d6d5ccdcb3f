"""Demo data for trying shopvault out: stores, staff of every role, and system clients.

Everything here is synthetic. Each record is created like an administrator would create it, and
each creation is recorded as an ``admin`` access event by the given actor, in the caller's unit
of work (so the data and its events are committed together, or not at all).

``seed_demo`` runs one step per kind of record; a step receives the ``DemoAccounts`` built so far
(the stores by code, in particular) and adds to it. Later capabilities add their steps (synthetic
customers and their visits) to ``seed_demo``'s list, after the stores and staff exist.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from faker import Faker
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.events import Action, Actor, EventDraft
from app.auth.passwords import hash_client_secret, hash_password_async, new_client_secret
from app.customers.schemas import CustomerCreate
from app.customers.service import add_customer
from app.models import Staff, Store, SystemClient, Visit
from app.models.base import new_id, utcnow
from app.presence.proofs import PresenceMethod
from app.roles import Role
from app.runtime import Runtime
from app.uow import UnitOfWork
from app.validation.names import display_name

# One password for every demo staff account: the point of demo data is to be logged in with.
DEMO_PASSWORD = "shopvault-demo"  # noqa: S105 (demo data, printed on purpose)
DEMO_SEED = 2026
# Fixed, documented (README) numbers, so that the demo's output carries no contact data and
# the search can still be tried: three customers per store.
DEMO_PHONES = {
    "S001": ("090-1000-0101", "090-1000-0102", "090-1000-0103"),
    "S002": ("090-1000-0201", "090-1000-0202", "090-1000-0203"),
}
# Their PINs (also in the README), to try proofs of presence. None can be a birth date's MMDD or a
# birth year, so none is refused as weak whatever birth date the demo gives the customer.
DEMO_PINS = {
    "090-1000-0101": "4826",
    "090-1000-0102": "5937",
    "090-1000-0103": "7391",
    "090-1000-0201": "8264",
    "090-1000-0202": "3790",
    "090-1000-0203": "6158",
}


@dataclass(frozen=True, slots=True)
class DemoStore:
    code: str
    name: str
    opens_at: str
    closes_at: str


@dataclass(frozen=True, slots=True)
class DemoMember:
    login: str
    display_name: str
    role: Role
    store: str | None


DEMO_STORES = (
    DemoStore("S001", "渋谷店", "10:00", "20:00"),
    DemoStore("S002", "新宿店", "11:00", "21:00"),
)

DEMO_STAFF = (
    DemoMember("admin", "システム 管理者", Role.ADMIN, None),
    DemoMember("auditor", "監査 花子", Role.AUDITOR, None),
    DemoMember("sales1", "渋谷 販売一郎", Role.SALES, "S001"),
    DemoMember("tech1", "渋谷 技術一郎", Role.TECHNICIAN, "S001"),
    DemoMember("manager1", "渋谷 店長一郎", Role.MANAGER, "S001"),
    DemoMember("sales2", "新宿 販売二郎", Role.SALES, "S002"),
    DemoMember("tech2", "新宿 技術二郎", Role.TECHNICIAN, "S002"),
    DemoMember("manager2", "新宿 店長二郎", Role.MANAGER, "S002"),
)

DEMO_CLIENTS = (
    ("billing", Role.BILLING_SYSTEM),
    ("fraud", Role.FRAUD_SYSTEM),
)


@dataclass(frozen=True, slots=True)
class StaffAccount:
    login: str
    role: Role
    store: str | None
    password: str


@dataclass(frozen=True, slots=True)
class ClientAccount:
    client_id: str
    role: Role
    client_secret: str


@dataclass(frozen=True, slots=True)
class CustomerEntry:
    store: str
    display_name: str


@dataclass
class DemoAccounts:
    """What the demo created: the stores and staff (for later steps) and what to print."""

    stores: dict[str, Store] = field(default_factory=dict)
    staff: list[StaffAccount] = field(default_factory=list)
    staff_ids: dict[str, str] = field(default_factory=dict)
    clients: list[ClientAccount] = field(default_factory=list)
    customers: list[CustomerEntry] = field(default_factory=list)


async def database_is_new(session: AsyncSession) -> bool:
    """No store and no staff member yet (a database with only its first admin is not new)."""
    statement = select(select(Store.id).exists() | select(Staff.id).exists())
    return not (await session.execute(statement)).scalar()


def _record(uow: UnitOfWork, actor: Actor, resource: str) -> None:
    uow.record(EventDraft(actor=actor, action=Action.ADMIN, resource=resource))


async def _add_stores(uow: UnitOfWork, actor: Actor, accounts: DemoAccounts) -> None:
    for demo in DEMO_STORES:
        store = Store(
            id=new_id(),
            code=demo.code,
            name=demo.name,
            opens_at=demo.opens_at,
            closes_at=demo.closes_at,
            created_at=utcnow(),
        )
        uow.session.add(store)
        accounts.stores[demo.code] = store
        _record(uow, actor, f"stores/{store.id}")


async def _add_staff(uow: UnitOfWork, actor: Actor, accounts: DemoAccounts) -> None:
    # One hash for the one shared password: Argon2 is slow by design, and the password is public.
    password_hash = await hash_password_async(DEMO_PASSWORD)
    for demo in DEMO_STAFF:
        now = utcnow()
        staff = Staff(
            id=new_id(),
            login=demo.login,
            display_name=demo.display_name,
            role=demo.role.value,
            store=accounts.stores[demo.store] if demo.store else None,
            password_hash=password_hash,
            active=True,
            auth_epoch=0,
            created_at=now,
            updated_at=now,
        )
        uow.session.add(staff)
        accounts.staff_ids[demo.login] = staff.id
        accounts.staff.append(StaffAccount(demo.login, demo.role, demo.store, DEMO_PASSWORD))
        _record(uow, actor, f"staff/{staff.id}")


async def _add_clients(uow: UnitOfWork, actor: Actor, accounts: DemoAccounts) -> None:
    for name, role in DEMO_CLIENTS:
        secret = new_client_secret()
        now = utcnow()
        client = SystemClient(
            id=new_id(),
            name=name,
            role=role.value,
            secret_hash=hash_client_secret(secret),
            active=True,
            auth_epoch=0,
            created_at=now,
            updated_at=now,
        )
        uow.session.add(client)
        accounts.clients.append(ClientAccount(name, role, secret))
        _record(uow, actor, f"clients/{client.id}")


def _demo_customer(faker: Faker, rng: random.Random, phone: str) -> CustomerCreate:
    """A plausible, entirely synthetic customer."""
    family, given = faker.last_name_pair(), faker.first_name_pair()
    return CustomerCreate.model_validate(
        {
            "name": f"{family[0]} {given[0]}",
            "name_kana": f"{family[1]} {given[1]}",
            "date_of_birth": faker.date_of_birth(minimum_age=18, maximum_age=85).isoformat(),
            "postal_code": faker.zipcode(),
            "address": faker.address().replace("\n", " "),
            "phone": phone,
            "email": f"demo{rng.randint(1000, 9999)}@example.jp",
            "identity_document": {
                "type": "drivers_license",
                "number": "".join(str(rng.randint(0, 9)) for _ in range(12)),
            },
            "consents": {"marketing_email": rng.random() < 0.5, "marketing_sms": False},
            "pin": DEMO_PINS[phone],
        }
    )


async def _add_customers(
    uow: UnitOfWork, runtime: Runtime, actor: Actor, accounts: DemoAccounts
) -> None:
    """Customers registered at each store, each in a (closed) visit of that store's sales."""
    faker = Faker("ja_JP")
    faker.seed_instance(DEMO_SEED)
    rng = random.Random(DEMO_SEED)  # noqa: S311 - reproducible synthetic data, no secret
    await uow.session.flush()
    for code, store in accounts.stores.items():
        sales = next(m.login for m in DEMO_STAFF if m.store == code and m.role is Role.SALES)
        for phone in DEMO_PHONES[code]:
            body = _demo_customer(faker, rng, phone)
            now = utcnow()
            visit = Visit(
                id=new_id(),
                store_id=store.id,
                type="new_contract",
                opened_by=accounts.staff_ids[sales],
                opened_at=now,
                closed_at=now,
            )
            uow.session.add(visit)
            await uow.session.flush()
            customer, _ = await add_customer(
                uow, runtime, body, store_id=store.id, visit_id=visit.id, recorded_by=sales, now=now
            )
            visit.customer_id = customer.id
            visit.presence_at, visit.presence_method = now, PresenceMethod.REGISTERED.value
            uow.record(
                EventDraft(
                    actor=actor,
                    action=Action.CREATE,
                    resource=f"customers/{customer.id}",
                    customer_ids=(customer.id,),
                    presence_method=PresenceMethod.REGISTERED.value,
                )
            )
            accounts.customers.append(CustomerEntry(code, display_name(body.name)))


async def seed_demo(uow: UnitOfWork, runtime: Runtime, actor: Actor) -> DemoAccounts:
    """Add the demo records to the unit of work (the caller commits). Raises ``IntegrityError``
    (on flush) if a store code, login or client name is already taken."""
    accounts = DemoAccounts()
    steps = (_add_stores, _add_staff, _add_clients)
    for step in steps:
        await step(uow, actor, accounts)
    await _add_customers(uow, runtime, actor, accounts)
    await uow.session.flush()
    return accounts
