"""The people and systems every test database starts with (synthetic, of course)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import Connection, Engine, insert

from app.auth.passwords import hash_client_secret
from app.models import Staff, Store, SystemClient
from app.models.base import new_id, utcnow

# Cheap Argon2 parameters for the seeded accounts only: the hash carries its parameters, so the
# service verifies these quickly while hashing new passwords with its own (strong) defaults.
_cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@dataclass(frozen=True)
class Member:
    login: str
    role: str
    store: str | None

    @property
    def password(self) -> str:
        return f"correct-horse-{self.login}"


@dataclass(frozen=True)
class Client:
    name: str
    role: str

    @property
    def secret(self) -> str:
        return f"test-secret-for-{self.name}-0123456789abcdef"


STORES = {
    "S001": ("渋谷店", "10:00", "20:00"),
    "S002": ("新宿店", "10:00", "20:00"),
}

ADMIN = Member("admin", "admin", None)
AUDITOR = Member("auditor1", "auditor", None)
SALES = Member("sales1", "sales", "S001")
TECHNICIAN = Member("tech1", "technician", "S001")
MANAGER = Member("manager1", "manager", "S001")
SALES_OTHER_STORE = Member("sales2", "sales", "S002")
TECHNICIAN_OTHER_STORE = Member("tech2", "technician", "S002")
MANAGER_OTHER_STORE = Member("manager2", "manager", "S002")
STAFF = (
    ADMIN,
    AUDITOR,
    SALES,
    TECHNICIAN,
    MANAGER,
    SALES_OTHER_STORE,
    TECHNICIAN_OTHER_STORE,
    MANAGER_OTHER_STORE,
)

BILLING = Client("billing", "billing_system")
FRAUD = Client("fraud", "fraud_system")
CLIENTS = (BILLING, FRAUD)


@functools.cache
def seed_rows() -> dict[type[Any], list[dict[str, Any]]]:
    """The cast as rows, computed once per test session so every database starts identical."""
    now = utcnow()
    store_ids = {code: new_id() for code in STORES}
    return {
        Store: [
            {
                "id": store_ids[code],
                "code": code,
                "name": name,
                "opens_at": opens,
                "closes_at": closes,
                "created_at": now,
            }
            for code, (name, opens, closes) in STORES.items()
        ],
        Staff: [
            {
                "id": new_id(),
                "login": member.login,
                "display_name": f"テスト {member.login}",
                "role": member.role,
                "store_id": store_ids[member.store] if member.store else None,
                "password_hash": _cheap.hash(member.password),
                "active": True,
                "auth_epoch": 0,
                "created_at": now,
                "updated_at": now,
            }
            for member in STAFF
        ],
        SystemClient: [
            {
                "id": new_id(),
                "name": client.name,
                "role": client.role,
                "secret_hash": hash_client_secret(client.secret),
                "active": True,
                "auth_epoch": 0,
                "created_at": now,
                "updated_at": now,
            }
            for client in CLIENTS
        ],
    }


def seed(engine: Engine) -> None:
    with engine.begin() as connection:
        seed_into(connection)


def seed_into(connection: Connection) -> None:
    for model, rows in seed_rows().items():
        connection.execute(insert(model), rows)
