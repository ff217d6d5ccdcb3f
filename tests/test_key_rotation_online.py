"""Online rotation with real processes: two uvicorn servers keep creating and reading customers
while ``shopvault keys rotate`` runs; the rotation is killed half-way (SIGKILL) and run again; then
every customer reads through both servers, and no request failed at any point.

Keys are generated (no ``SHOPVAULT_MASTER_KEY``): the servers start together on an empty data
directory and must agree on the ring file they create, then pick up the new key (and drop the old
one) without a restart.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from app.keyring import RingFile, parse_ring
from tests import cast
from tests.conftest import login
from tests.world import Registered, purpose, register_customer

SHOPVAULT = Path(sys.executable).parent / "shopvault"
SEED_CUSTOMERS = 20


@contextmanager
def uvicorn_server(env: dict[str, str], cwd: Path, log_path: Path) -> Iterator[str]:
    """``uvicorn app.main:app`` on a socket this test bound to 127.0.0.1, port 0."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--fd", str(listener.fileno())],
            env=env,
            cwd=cwd,
            pass_fds=(listener.fileno(),),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    listener.close()  # the server has its own copy
    try:
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def wait_until_up(base: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server at {base} did not come up")


class Customers:
    """Customers registered so far (by either server), shared by the traffic threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Registered] = []
        self._seed = 1000

    def next_seed(self) -> int:
        with self._lock:
            self._seed += 1
            return self._seed

    def add(self, customer: Registered) -> None:
        with self._lock:
            self._items.append(customer)

    def all(self) -> list[Registered]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class Traffic(threading.Thread):
    """A POS terminal on one server: registers a customer, reads a random one, over and over."""

    def __init__(self, base: str, customers: Customers) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.customers = customers
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.reads = 0

    def run(self) -> None:
        rng = random.Random(self.base)
        with httpx.Client(base_url=self.base, timeout=60) as client:
            sales = login(client, cast.SALES)
            while not self.stop.is_set():
                try:
                    self._once(client, sales, rng)
                except Exception as exc:  # register_customer asserts its 201s
                    self.failures.append(f"{type(exc).__name__}: {str(exc)[:300]}")

    def _once(self, client: httpx.Client, sales: dict[str, str], rng: random.Random) -> None:
        self.customers.add(register_customer(client, sales, seed=self.customers.next_seed()))
        customer = rng.choice(self.customers.all())
        response = client.get(
            f"/customers/{customer.id}",
            headers=purpose(sales, "contract", visit=customer.visit_id),
        )
        self.reads += 1
        if response.status_code != 200:
            self.failures.append(f"read {response.status_code}: {response.text[:300]}")


COUNT_WRAPPED = (
    "SELECT (SELECT count(*) FROM customer_key WHERE master_key_id = :id)"
    " + (SELECT count(*) FROM service_key WHERE master_key_id = :id)"
)


class KeyCounter:
    """Data keys per master key, read without waiting for writers.

    On SQLite the application's connections begin every transaction with ``BEGIN IMMEDIATE``,
    and a poller queued for the write lock would fall behind the rotation; a plain read-only
    connection reads the WAL snapshot at once."""

    def __init__(self, database_url: str, db: Engine) -> None:
        url = make_url(database_url)
        self._db = db
        self._sqlite = (
            sqlite3.connect(f"file:{url.database}?mode=ro", uri=True, check_same_thread=False)
            if url.get_backend_name() == "sqlite"
            else None
        )

    def __call__(self, key_id: str) -> int:
        if self._sqlite is not None:
            count: int = self._sqlite.execute(
                COUNT_WRAPPED.replace(":id", "?"), (key_id, key_id)
            ).fetchone()[0]
            return count
        with self._db.connect() as connection:
            count = connection.execute(text(COUNT_WRAPPED), {"id": key_id}).scalar_one()
            return count

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()


def _wait_for(condition: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for: {condition}"
        time.sleep(0.01)


def test_rotation_while_two_servers_work_survives_a_crash_and_loses_nothing(
    database_url: str,
    db: Engine,
    tmp_path: Path,
    test_keys: dict[str, SecretStr],
) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPVAULT_")}
    env |= {
        "SHOPVAULT_DATABASE_URL": database_url,
        "SHOPVAULT_DATA_DIR": str(data_dir),
        "SHOPVAULT_LOG_LEVEL": "WARNING",
    }
    for name in ("jwt_key", "index_key"):
        env[f"SHOPVAULT_{name.upper()}"] = test_keys[name].get_secret_value()
    ring_file = RingFile(data_dir)
    customers = Customers()
    count = KeyCounter(database_url, db)

    with ExitStack() as servers:
        bases = [
            servers.enter_context(uvicorn_server(env, tmp_path, tmp_path / f"server{n}.log"))
            for n in (1, 2)
        ]
        for base in bases:
            wait_until_up(base)
        # Both started on an empty data directory: one ring, one key, and they agree on it.
        [old_id] = parse_ring(ring_file.path.read_text(), "ring").ids

        for base in bases:
            with httpx.Client(base_url=base, timeout=60) as client:
                sales = login(client, cast.SALES)
                for _ in range(SEED_CUSTOMERS // 2):
                    customers.add(register_customer(client, sales, seed=customers.next_seed()))
        traffic = [Traffic(base, customers) for base in bases]
        for thread in traffic:
            thread.start()

        # The rotation, killed once it has committed a few batches of one data key each.
        rotation = subprocess.Popen(
            [str(SHOPVAULT), "keys", "rotate", "--batch-size", "1"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        _wait_for("the new key in the ring", lambda: len(ring_file.load()[0].ids) == 2)
        new_id = ring_file.load()[0].newest_id
        _wait_for("a few batches committed", lambda: count(new_id) >= 5)
        os.killpg(rotation.pid, signal.SIGKILL)
        rotation.wait()
        assert count(old_id) > 0, "the rotation finished before it could be killed"
        assert parse_ring(ring_file.path.read_text(), "ring").ids == (old_id, new_id)

        # The servers carry on meanwhile, wrapping with the new key.
        created = len(customers)
        _wait_for("customers created after the crash", lambda: len(customers) >= created + 4)

        resumed = subprocess.run(
            [str(SHOPVAULT), "keys", "rotate"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert f"finishing the rotation to master key {new_id}" in resumed.stdout
        assert f"retired and removed from {ring_file.path}: {old_id}" in resumed.stdout

        created = len(customers)
        _wait_for("customers created after the rotation", lambda: len(customers) >= created + 4)
        for thread in traffic:
            thread.stop.set()
        for thread in traffic:
            thread.join(timeout=120)
        assert [thread.failures for thread in traffic] == [[], []]
        assert all(thread.reads > 0 for thread in traffic)

        # Every customer, whichever server registered it and under whichever key, reads on both.
        everyone = customers.all()
        for base in bases:
            with httpx.Client(base_url=base, timeout=60) as client:
                sales = login(client, cast.SALES)
                for customer in everyone:
                    response = client.get(
                        f"/customers/{customer.id}",
                        headers=purpose(sales, "contract", visit=customer.visit_id),
                    )
                    assert response.status_code == 200, response.text
                    assert response.json()["name"] == customer.body["name"]

    # One key left, everywhere; the old one is retired and gone from the data directory.
    assert parse_ring(ring_file.path.read_text(), "ring").ids == (new_id,)
    assert count(old_id) == 0
    assert count(new_id) == 2 * len(everyone) + 1  # and the service key
    count.close()
    with db.connect() as connection:
        retired = connection.execute(
            text("SELECT id FROM master_key_retirement WHERE retired_at IS NOT NULL")
        ).scalars()
        assert list(retired) == [old_id]
