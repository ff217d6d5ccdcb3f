"""The benchmark's world: a fresh database, migrated, with one store, a ``sales`` member and a
``manager``, made through the real API (the first admin and the auditor who approves the admin's
changes through the real CLI, as an operator would make them). Customers in numbers come from
``bench.bulk``; ``seed_real`` registers one through the API (``bench.login_burst``)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from app import migrate
from app.config import Settings
from app.keys import encode_key
from app.main import create_app

warnings.filterwarnings("ignore", message=".*httpx2.*")
from fastapi.testclient import TestClient  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STORE_CODE = "B001"
ADMIN_LOGIN = "bench-admin"
AUDITOR_LOGIN = "bench-auditor"
SALES_LOGIN = "bench-sales"
MANAGER_LOGIN = "bench-manager"
TERMINAL = "POS-BENCH-01"
TOKEN_TTL_SECONDS = 3600  # outlives any run; the token is issued once, before the load

# Entirely synthetic, like all data in this project.
CUSTOMER = {
    "name": "山田 太郎",
    "name_kana": "ヤマダ タロウ",
    "date_of_birth": "1985-04-12",
    "postal_code": "150-0041",
    "address": "東京都渋谷区神南1-2-3",
    "phone": "090-1234-5678",
    "email": "bench@example.jp",
    "identity_document": {"type": "drivers_license", "number": "123456789012"},
    "consents": {"marketing_email": False, "marketing_sms": True},
    "pin": "5837",
}


@dataclass(frozen=True)
class RealTarget:
    """What a POS terminal sends to read the customer."""

    path: str
    headers: dict[str, str]


def _admin_conninfo(base_url: str) -> str:
    return make_url(base_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _autocommit(base_url: str, sql: str) -> None:
    with psycopg.connect(_admin_conninfo(base_url), autocommit=True) as connection:
        connection.execute(sql)


@contextmanager
def bench_database(base_url: str) -> Iterator[str]:
    """A new database ``shopvault_bench_<random>`` next to ``base_url``'s, dropped at the end."""
    name = f"shopvault_bench_{uuid.uuid4().hex[:10]}"
    _autocommit(base_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _autocommit(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def environment(database_url: str, data_dir: Path) -> dict[str, str]:
    """``SHOPVAULT_*`` settings for this run: its database and freshly generated keys."""
    env = {
        "SHOPVAULT_DATABASE_URL": database_url,
        "SHOPVAULT_DATA_DIR": str(data_dir),
        "SHOPVAULT_TOKEN_TTL_SECONDS": str(TOKEN_TTL_SECONDS),
    }
    for name in ("jwt", "master", "index"):
        env[f"SHOPVAULT_{name.upper()}_KEY"] = encode_key(secrets.token_bytes(32))
    return env


def _expect(response: Any, status: int, what: str) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"seeding: {what} answered {response.status_code}: {response.text}")
    return response.json()


def _login(client: TestClient, login: str, password: str, terminal: str | None = None) -> str:
    headers = {"X-Terminal-Id": terminal} if terminal else {}
    body = {"grant_type": "password", "username": login, "password": password}
    token = _expect(client.post("/auth/token", data=body, headers=headers), 200, "login")
    return str(token["access_token"])


def _create_operator_account(env: dict[str, str], command: str, login: str, password: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.cli", command, login],
        input=password + "\n",
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )


@dataclass(frozen=True)
class Member:
    """A store employee as a POS terminal holds them: id, login and a token."""

    id: str
    login: str
    token: str

    @property
    def authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class World:
    store_id: str
    store_code: str
    sales: Member
    manager: Member


def _member(
    client: TestClient, admin: dict[str, str], auditor: dict[str, str], login: str, role: str
) -> Member:
    """Created by the admin, approved by the auditor, its own password set at first login."""
    temporary_password = secrets.token_urlsafe(18)
    password = secrets.token_urlsafe(18)
    member = {
        "login": login,
        "display_name": f"ベンチ {role}",
        "role": role,
        "store": STORE_CODE,
        "password": temporary_password,
    }
    staff = _expect(client.post("/staff", json=member, headers=admin), 201, "create staff")
    approval = client.post(f"/staff/{staff['id']}/approve", headers=auditor)
    _expect(approval, 200, "approve staff")
    temporary = _login(client, login, temporary_password, terminal=TERMINAL)
    change = {"current": temporary_password, "new": password}
    changed = client.post(
        "/auth/password", json=change, headers={"Authorization": f"Bearer {temporary}"}
    )
    token = _expect(changed, 200, "set own password")["access_token"]
    return Member(id=staff["id"], login=login, token=str(token))


def seed_world(env: dict[str, str]) -> World:
    """Migrate; the first admin and the auditor through the CLI; a store, a ``sales`` member and
    a ``manager`` through the HTTP API (each approved by the auditor)."""
    migrate.upgrade(env["SHOPVAULT_DATABASE_URL"])
    admin_password = secrets.token_urlsafe(18)
    auditor_password = secrets.token_urlsafe(18)
    _create_operator_account(env, "create-admin", ADMIN_LOGIN, admin_password)
    _create_operator_account(env, "create-auditor", AUDITOR_LOGIN, auditor_password)
    with TestClient(create_app(settings_of(env))) as client:
        admin = {"Authorization": f"Bearer {_login(client, ADMIN_LOGIN, admin_password)}"}
        store = {
            "code": STORE_CODE,
            "name": "ベンチ店",
            "opening_hours": {"open": "00:00", "close": "23:59"},
        }
        created = _expect(client.post("/stores", json=store, headers=admin), 201, "create store")
        auditor = {"Authorization": f"Bearer {_login(client, AUDITOR_LOGIN, auditor_password)}"}
        sales = _member(client, admin, auditor, SALES_LOGIN, "sales")
        manager = _member(client, admin, auditor, MANAGER_LOGIN, "manager")
    return World(created["id"], STORE_CODE, sales, manager)


def settings_of(env: dict[str, str]) -> Settings:
    return Settings.model_validate(
        {key.removeprefix("SHOPVAULT_").lower(): value for key, value in env.items()}
    )


def read_headers(member: Member, visit_id: str) -> dict[str, str]:
    """What a POS terminal sends to read a customer within a visit (purpose ``contract``)."""
    return {**member.authorization, "X-Access-Purpose": "contract", "X-Visit-Id": visit_id}


def seed_real(env: dict[str, str]) -> RealTarget:
    """The world, and one customer registered within an open visit through the API; returns the
    hot read of that customer."""
    world = seed_world(env)
    with TestClient(create_app(settings_of(env))) as client:
        sales = world.sales.authorization
        visit = _expect(
            client.post("/visits", json={"type": "new_contract"}, headers=sales), 201, "visit"
        )
        headers = read_headers(world.sales, visit["id"])
        customer = _expect(
            client.post("/customers", json=CUSTOMER, headers=headers), 201, "customer"
        )
        target = RealTarget(path=f"/customers/{customer['id']}", headers=headers)
        _expect(client.get(target.path, headers=target.headers), 200, "read the customer")
    return target
