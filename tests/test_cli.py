"""The installed ``shopvault`` console script, run as a user would, on a fresh database."""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from app import migrate
from app.cli import main
from app.config import Settings
from app.db import create_sync_engine
from app.demo import DEMO_PHONES
from app.keys import KEY_NAMES, encode_key, key_path
from app.main import create_app
from app.models import AccessEvent, Customer, Staff, Store, SystemClient
from tests import databases

SHOPVAULT = Path(sys.executable).parent / "shopvault"
KEY_WARNING = "generated a development key"


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


class Cli:
    """``shopvault`` with a clean environment: its own data directory and database.

    ``process`` runs the installed console script; ``call`` runs the same ``main`` in this process
    (for the refusals, to spare a process start each).
    """

    def __init__(
        self,
        env: dict[str, str],
        data_dir: Path,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self.env = env
        self.data_dir = data_dir
        self.database_url = database_url
        self._monkeypatch = monkeypatch
        self._capsys = capsys

    def process(self, *args: str, stdin: str = "") -> Outcome:
        result = subprocess.run(
            [str(SHOPVAULT), *args],
            input=stdin,
            env=self.env,
            cwd=self.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return Outcome(result.returncode, result.stdout, result.stderr)

    def call(self, *args: str, stdin: str = "") -> Outcome:
        with self._monkeypatch.context() as patch:
            for name in os.environ:
                if name.startswith("SHOPVAULT_"):
                    patch.delenv(name)
            for name, value in self.env.items():
                if name.startswith("SHOPVAULT_"):
                    patch.setenv(name, value)
            patch.setattr(sys, "stdin", io.StringIO(stdin))
            patch.chdir(self.data_dir.parent)
            self._capsys.readouterr()
            code = main(list(args))
            out, err = self._capsys.readouterr()
        return Outcome(code, out, err)

    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, database_url=self.database_url)

    def scalar(self, statement: object) -> object:
        engine = create_sync_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return connection.execute(statement).scalar()
        finally:
            engine.dispose()

    def count(self, model: type) -> int:
        return int(str(self.scalar(select(func.count()).select_from(model))))


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SHOPVAULT_")}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``main`` configures the process's logging; put it back for the tests that follow."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    saved_loggers = [(lg.handlers[:], lg.propagate, lg.disabled) for lg in loggers]
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for logger, (handlers, propagate, disabled) in zip(loggers, saved_loggers, strict=True):
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        # Where the default SQLite database lives: nothing is configured but the data directory.
        yield f"sqlite:///{tmp_path / 'data' / 'shopvault.db'}"
        return
    base = databases.postgres_base_url()
    assert base is not None
    with databases.postgres_empty(base) as url:
        yield url


@pytest.fixture
def cli(
    backend: str,
    empty_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    env = clean_environment()
    env["SHOPVAULT_DATA_DIR"] = str(tmp_path / "data")
    if backend == "postgres":
        env["SHOPVAULT_DATABASE_URL"] = empty_database_url
    return Cli(env, tmp_path / "data", empty_database_url, monkeypatch, capsys)


@pytest.fixture
def migrated(cli: Cli) -> Cli:
    """A fresh, migrated database (migrated in-process: one process start less per test)."""
    cli.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(cli.database_url)
    return cli


def assert_clean_refusal(result: Outcome, code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    refusals = [line for line in result.stderr.splitlines() if line.startswith("shopvault:")]
    assert len(refusals) == 1, result.stderr
    return refusals[0]


def token_for(client: TestClient, login: str, password: str) -> dict[str, str]:
    response = client.post(
        "/auth/token", data={"grant_type": "password", "username": login, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


# --- migrate ------------------------------------------------------------------------------------


def test_migrate_creates_the_schema_and_is_idempotent(cli: Cli) -> None:
    first = cli.process("migrate")
    assert first.returncode == 0, first.stderr
    version = select(text("version_num")).select_from(text("alembic_version"))
    assert cli.scalar(version) in migrate.head_revisions()
    assert cli.count(Staff) == 0

    second = cli.call("migrate")
    assert second.returncode == 0, second.stderr
    assert cli.scalar(version) in migrate.head_revisions()


# --- create-admin -------------------------------------------------------------------------------


def test_create_admin_creates_an_admin_who_can_log_in_and_records_it(migrated: Cli) -> None:
    password = "a-long-enough-passphrase"
    created = migrated.process("create-admin", "root", stdin=password + "\n")
    assert created.returncode == 0, created.stderr
    assert password not in created.stdout + created.stderr

    # The keys did not exist: generated into the data directory, owner-only, with a warning.
    assert created.stderr.count(KEY_WARNING) == len(KEY_NAMES)
    keys = {}
    for name in KEY_NAMES:
        path = key_path(migrated.data_dir, name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        keys[name] = path.read_bytes()

    # The app (with the same data directory, hence the same keys) lets the admin in.
    with TestClient(create_app(migrated.settings())) as client:
        me = client.get("/auth/me", headers=token_for(client, "root", password)).json()
    assert me["login"] == "root"
    assert me["role"] == "admin"
    assert me["store"] is None

    engine = create_sync_engine(migrated.database_url)
    with engine.connect() as connection:
        admin_id = connection.execute(select(Staff.id).where(Staff.login == "root")).scalar_one()
        events = connection.execute(
            select(AccessEvent.actor, AccessEvent.action, AccessEvent.resource).where(
                AccessEvent.action == "admin"
            )
        ).all()
    engine.dispose()
    assert [tuple(event) for event in events] == [("cli", "admin", f"staff/{admin_id}")]

    # A second admin with the same login is refused; nothing changes; the keys are reused.
    again = migrated.call("create-admin", "root", stdin="another-long-passphrase\n")
    assert "already exists" in assert_clean_refusal(again, 1)
    assert KEY_WARNING not in again.stderr
    assert {name: key_path(migrated.data_dir, name).read_bytes() for name in KEY_NAMES} == keys
    assert migrated.count(Staff) == 1
    assert migrated.count(AccessEvent) == 2  # the admin's creation and the app login
    with TestClient(create_app(migrated.settings())) as client:
        token_for(client, "root", password)


def test_create_auditor_makes_an_auditor_at_once_with_their_own_password(migrated: Cli) -> None:
    """Only the machine makes auditors (the API refuses the role); no approval is needed, and
    the password the operator typed is not temporary."""
    password = "an-auditors-passphrase"
    created = migrated.call("create-auditor", "audit.chief", stdin=password + "\n")
    assert created.returncode == 0, created.stderr
    assert "auditor audit.chief created" in created.stdout
    assert password not in created.stdout + created.stderr
    with TestClient(create_app(migrated.settings())) as client:
        token = client.post(
            "/auth/token",
            data={"grant_type": "password", "username": "audit.chief", "password": password},
        )
        assert token.status_code == 200, token.text
        assert "password_change_required" not in token.json()
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        me = client.get("/auth/me", headers=headers).json()
        assert (me["role"], me["store"], me["password_change_required"]) == (
            "auditor",
            None,
            False,
        )
        assert client.get("/staff", params={"pending": "true"}, headers=headers).status_code == 200
    engine = create_sync_engine(migrated.database_url)
    with engine.connect() as connection:
        row = connection.execute(
            select(Staff.pending_approval, Staff.password_expires_at, Staff.id).where(
                Staff.login == "audit.chief"
            )
        ).one()
        events = connection.execute(
            select(AccessEvent.actor, AccessEvent.resource, AccessEvent.changed_fields).where(
                AccessEvent.action == "admin", AccessEvent.actor == "cli"
            )
        ).all()
    engine.dispose()
    assert (row.pending_approval, row.password_expires_at) == (False, None)
    assert [tuple(event) for event in events] == [("cli", f"staff/{row.id}", None)]

    again = migrated.call("create-auditor", "audit.chief", stdin="another-long-passphrase\n")
    assert "already exists" in assert_clean_refusal(again, 1)
    weak = migrated.call("create-auditor", "audit.two", stdin="short\n")
    assert_clean_refusal(weak, 1)
    assert migrated.count(Staff) == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "password", ["short-pass1", "xx-root-is-in-it-xx", ""], ids=["short", "has-login", "empty"]
)
def test_create_admin_refuses_a_weak_password(migrated: Cli, password: str) -> None:
    result = migrated.call("create-admin", "root", stdin=password + "\n")
    assert_clean_refusal(result, 1)
    assert migrated.count(Staff) == 0
    assert migrated.count(AccessEvent) == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_create_admin_refuses_a_malformed_login(migrated: Cli) -> None:
    result = migrated.call("create-admin", "Root Admin", stdin="a-long-enough-passphrase\n")
    assert "login" in assert_clean_refusal(result, 1)
    assert migrated.count(Staff) == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_create_admin_on_an_unmigrated_database_says_so(cli: Cli) -> None:
    cli.data_dir.mkdir(parents=True)
    result = cli.call("create-admin", "root", stdin="a-long-enough-passphrase\n")
    assert "shopvault migrate" in assert_clean_refusal(result, 1)


# --- demo ---------------------------------------------------------------------------------------

STAFF_LINE = re.compile(
    r"^\s+(?P<login>\S+)\s+(?P<role>sales|technician|manager|auditor|admin)\s+"
    r"(?P<store>S\d{3}|-)\s+(?P<password>\S+)$"
)
CLIENT_LINE = re.compile(
    r"^\s+(?P<client>\S+)\s+(?P<role>billing_system|fraud_system)\s+(?P<secret>\S+)$"
)
CUSTOMER_LINE = re.compile(r"^\s+(?P<store>S\d{3})\s+(?P<display>\S+ \*\*)$")
DEMO_TABLES = (Store, Staff, SystemClient, Customer, AccessEvent)


def counts(cli: Cli) -> dict[type, int]:
    return {model: cli.count(model) for model in DEMO_TABLES}


def test_demo_prints_working_credentials_and_if_new_adds_them_once(migrated: Cli) -> None:
    first = migrated.process("demo", "--if-new")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    staff = [m.groupdict() for line in lines if (m := STAFF_LINE.match(line))]
    clients = [m.groupdict() for line in lines if (m := CLIENT_LINE.match(line))]
    customers = [m.groupdict() for line in lines if (m := CUSTOMER_LINE.match(line))]
    assert [c["store"] for c in customers] == [
        code for code, phones in DEMO_PHONES.items() for _ in phones
    ]
    # The demo prints no contact data: no phone number in any form.
    for phones in DEMO_PHONES.values():
        for phone in phones:
            assert phone not in first.stdout and phone.replace("-", "") not in first.stdout
    assert {(m["role"], m["store"]) for m in staff} == {
        ("admin", "-"),
        ("auditor", "-"),
        *(
            (role, store)
            for role in ("sales", "technician", "manager")
            for store in ("S001", "S002")
        ),
    }
    assert {c["role"] for c in clients} == {"billing_system", "fraud_system"}

    # Each creation is an admin event by the command line, committed with the data.
    created = counts(migrated)
    assert created == {
        Store: 2,
        Staff: len(staff),
        SystemClient: len(clients),
        Customer: len(customers),
        AccessEvent: 2 + len(staff) + len(clients) + len(customers),
    }
    engine = create_sync_engine(migrated.database_url)
    with engine.connect() as connection:
        resources = connection.execute(
            select(AccessEvent.resource).where(
                AccessEvent.action == "admin", AccessEvent.actor == "cli"
            )
        ).scalars()
        kinds = sorted(resource.split("/")[0] for resource in resources)
    engine.dispose()
    assert kinds == sorted(["stores"] * 2 + ["staff"] * len(staff) + ["clients"] * len(clients))

    # A second run finds a database that is not new, and adds nothing.
    second = migrated.call("demo", "--if-new")
    assert second.returncode == 0, second.stderr
    assert "no demo data added" in second.stdout
    assert not any(STAFF_LINE.match(line) for line in second.stdout.splitlines())
    assert counts(migrated) == created

    # The printed credentials work: every one on SQLite; on PostgreSQL (the same code, only the
    # storage differs) one of each kind, as Argon2 makes each login cost a quarter second.
    on_sqlite = migrated.database_url.startswith("sqlite")
    with TestClient(create_app(migrated.settings())) as client:
        for member in staff if on_sqlite else staff[:1]:
            headers = token_for(client, member["login"], member["password"])
            me = client.get("/auth/me", headers=headers).json()
            assert (me["role"], me["store"] or "-") == (member["role"], member["store"])
            assert me["password_change_required"] is False  # no approval, not temporary
        for system in clients:
            response = client.post(
                "/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": system["client"],
                    "client_secret": system["secret"],
                },
            )
            assert response.status_code == 200, response.text
        # The customers are found by their documented phone numbers, masked as printed.
        sales = next(m for m in staff if m["role"] == "sales" and m["store"] == "S001")
        headers = {
            **token_for(client, sales["login"], sales["password"]),
            "X-Access-Purpose": "contract",
        }
        phones = [phone for store_phones in DEMO_PHONES.values() for phone in store_phones]
        for customer, phone in zip(customers, phones, strict=True):
            found = client.post("/customers/search", json={"phone": phone}, headers=headers)
            assert found.status_code == 200, found.text
            assert [i["display_name"] for i in found.json()["items"]] == [customer["display"]]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_demo_if_new_leaves_a_database_with_an_admin_alone(migrated: Cli) -> None:
    assert migrated.call("create-admin", "root", stdin="a-long-enough-passphrase\n").returncode == 0
    before = counts(migrated)
    result = migrated.call("demo", "--if-new")
    assert result.returncode == 0
    assert counts(migrated) == before


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_demo_without_if_new_refuses_to_duplicate_and_adds_nothing(migrated: Cli) -> None:
    assert migrated.call("demo").returncode == 0
    before = counts(migrated)
    again = migrated.call("demo")
    assert "already exist" in assert_clean_refusal(again, 1)
    assert counts(migrated) == before


# --- configuration errors -----------------------------------------------------------------------

CONFIGURATION_ERRORS = {
    "weak jwt key": (["serve", "--port", "0"], "SHOPVAULT_JWT_KEY", encode_key(b"k" * 32)),
    "short jwt key": (
        ["create-admin", "root"],
        "SHOPVAULT_JWT_KEY",
        encode_key(secrets.token_bytes(16)),
    ),
    "unsupported database": (
        ["migrate"],
        "SHOPVAULT_DATABASE_URL",
        "mysql://shop:hunter2-secret@db.example/shop",
    ),
    "unparsable database url": (["demo"], "SHOPVAULT_DATABASE_URL", "hunter2-secret not a url"),
    "bad setting": (["migrate"], "SHOPVAULT_TOKEN_TTL_SECONDS", "5"),
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("args", "variable", "value"), CONFIGURATION_ERRORS.values(), ids=CONFIGURATION_ERRORS.keys()
)
def test_a_configuration_problem_is_one_line_and_exit_2(
    cli: Cli, args: list[str], variable: str, value: str
) -> None:
    cli.env[variable] = value
    result = cli.call(*args, stdin="a-long-enough-passphrase\n")
    line = assert_clean_refusal(result, 2)
    assert variable in line
    assert "hunter2-secret" not in result.stderr


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_console_script_refuses_to_serve_with_a_weak_key(cli: Cli) -> None:
    cli.env["SHOPVAULT_JWT_KEY"] = encode_key(b"k" * 32)
    result = cli.process("serve", "--port", "0")
    assert "SHOPVAULT_JWT_KEY" in assert_clean_refusal(result, 2)
