"""The benchmark's world: a fresh database, migrated, with one store, one ``sales`` member, and
one customer registered within an open visit, all made through the real API (the first admin
and the auditor who approves the admin's changes through the real CLI, as an operator would make
them)."""

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


def seed_real(env: dict[str, str]) -> RealTarget:
    """Migrate, then build the world through the CLI and the HTTP API; returns the hot read."""
    migrate.upgrade(env["SHOPVAULT_DATABASE_URL"])
    admin_password = secrets.token_urlsafe(18)
    auditor_password = secrets.token_urlsafe(18)
    temporary_password = secrets.token_urlsafe(18)
    sales_password = secrets.token_urlsafe(18)
    _create_operator_account(env, "create-admin", ADMIN_LOGIN, admin_password)
    _create_operator_account(env, "create-auditor", AUDITOR_LOGIN, auditor_password)
    settings = Settings.model_validate(
        {key.removeprefix("SHOPVAULT_").lower(): value for key, value in env.items()}
    )
    with TestClient(create_app(settings)) as client:
        admin = {"Authorization": f"Bearer {_login(client, ADMIN_LOGIN, admin_password)}"}
        store = {
            "code": STORE_CODE,
            "name": "ベンチ店",
            "opening_hours": {"open": "00:00", "close": "23:59"},
        }
        _expect(client.post("/stores", json=store, headers=admin), 201, "create store")
        member = {
            "login": SALES_LOGIN,
            "display_name": "ベンチ 販売",
            "role": "sales",
            "store": STORE_CODE,
            "password": temporary_password,
        }
        staff = _expect(client.post("/staff", json=member, headers=admin), 201, "create staff")
        auditor = {"Authorization": f"Bearer {_login(client, AUDITOR_LOGIN, auditor_password)}"}
        approval = client.post(f"/staff/{staff['id']}/approve", headers=auditor)
        _expect(approval, 200, "approve staff")
        temporary = _login(client, SALES_LOGIN, temporary_password, terminal=TERMINAL)
        change = {"current": temporary_password, "new": sales_password}
        changed = client.post(
            "/auth/password", json=change, headers={"Authorization": f"Bearer {temporary}"}
        )
        token = _expect(changed, 200, "set own password")["access_token"]
        sales = {"Authorization": f"Bearer {token}"}
        visit = _expect(
            client.post("/visits", json={"type": "new_contract"}, headers=sales), 201, "visit"
        )
        read_headers = {**sales, "X-Access-Purpose": "contract", "X-Visit-Id": visit["id"]}
        customer = _expect(
            client.post("/customers", json=CUSTOMER, headers=read_headers), 201, "customer"
        )
        target = RealTarget(path=f"/customers/{customer['id']}", headers=read_headers)
        _expect(client.get(target.path, headers=target.headers), 200, "read the customer")
    return target
