"""``make soak``: a bounded soak of mixed POS traffic against ``shopvault serve --workers 2`` on
PostgreSQL, loopback only.

Run::

    make soak                                          # = .venv/bin/python -m tests.soak
    .venv/bin/python -m tests.soak --seconds 300 --terminals 12

It creates a fresh database next to ``SHOPVAULT_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``), migrates it, adds the test cast (stores, staff,
system clients) and serves the real app with two uvicorn workers on a free loopback port, with
fresh keys. Terminals (threads, each a POS terminal of its own) then loop through what a shop
does: open a visit, register or find a customer, attach them with their PIN, read the record,
add a contract, send a message, read the visit's notes, close the visit — with a refused access
now and then (a purpose the role may not use) and a billing system reading too.

It passes when, over the whole run:

- no answer was a ``5xx`` (nor a broken connection);
- every read that answered ``200`` has its ``allowed`` access event (by request id), and every
  ``403`` its ``denied`` one;
- ``shopvault audit verify --full`` finds the access log whole afterwards;
- the workers' memory levels off: the resident size at the end is within 25% (and 64 MiB) of
  its size after the warm-up (the first fifth of the run).

Prints one JSON summary (also written to a temporary directory, named on stderr); exit status 0
when every check passed, 1 otherwise. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app import migrate
from app.db import create_sync_engine
from app.keys import encode_key
from tests import cast
from tests.databases import postgres_empty
from tests.world import KNOWN_PINS, customer_body, purpose

ROOT = Path(__file__).resolve().parent.parent
SHOPVAULT = Path(sys.executable).parent / "shopvault"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
MESSAGE = {
    "channel": "sms",
    "template": "inquiry_follow_up",
    "variables": {
        "inquiry_date": "2026-11-20",
        "summary": "確認できました。",
        "store_name": "渋谷店",
    },
}
MAX_GROWTH_RATIO = 1.25
MAX_GROWTH_BYTES = 64 * 1024 * 1024


@dataclass
class Tally:
    """What the terminals saw, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)  # request ids of 200 customer reads
    refusals: list[str] = field(default_factory=list)  # request ids of 403s
    customers: list[tuple[str, str]] = field(default_factory=list)  # (id, phone)

    def record(self, label: str, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[f"{label} {response.status_code}"] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{label} {response.status_code} {response.text[:200]}")
            if response.status_code == 403:
                self.refusals.append(response.headers["x-request-id"])

    def broken(self, label: str, error: Exception) -> None:
        with self.lock:
            self.server_errors.append(f"{label}: {type(error).__name__}")


class Terminal(threading.Thread):
    """One POS terminal: a member of staff, looping through visits until told to stop."""

    def __init__(self, base: str, member: cast.Member, tally: Tally, seed: int) -> None:
        super().__init__(daemon=True)
        self.base, self.member, self.tally = base, member, tally
        self.rng = random.Random(seed)
        self.stop = threading.Event()

    def call(self, client: httpx.Client, label: str, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = client.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            self.tally.broken(label, error)
            return None
        self.tally.record(label, response)
        return response

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            token = self.call(
                client,
                "login",
                "POST",
                "/auth/token",
                data={
                    "grant_type": "password",
                    "username": self.member.login,
                    "password": self.member.password,
                },
            )
            if token is None or token.status_code != 200:
                return
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            while not self.stop.is_set():
                self.visit(client, headers)

    def visit(self, client: httpx.Client, headers: dict[str, str]) -> None:
        opened = self.call(
            client, "open", "POST", "/visits", json={"type": "new_contract"}, headers=headers
        )
        if opened is None or opened.status_code != 201:
            return
        visit = opened.json()["id"]
        known = self.tally.customers
        if not known or self.rng.random() < 0.3:
            body = customer_body(seed=self.rng.randrange(10**9))
            body["phone"] = f"090-{self.rng.randint(1000, 9999)}-{self.rng.randint(1000, 9999)}"
            made = self.call(
                client,
                "register",
                "POST",
                "/customers",
                json=body,
                headers=purpose(headers, "contract", visit=visit),
            )
            if made is None or made.status_code != 201:
                return
            customer = made.json()["id"]
            KNOWN_PINS[customer] = body["pin"]
            with self.tally.lock:
                known.append((customer, body["phone"]))
        else:
            with self.tally.lock:
                customer, phone = self.rng.choice(known)
            self.call(
                client,
                "search",
                "POST",
                "/customers/search",
                json={"phone": phone},
                headers=purpose(headers, "contract"),
            )
            attach = {
                "customer_id": customer,
                "presence": {"method": "pin", "pin": KNOWN_PINS[customer]},
            }
            self.call(client, "attach", "PATCH", f"/visits/{visit}", json=attach, headers=headers)
        context = purpose(headers, "contract", visit=visit)
        read = self.call(client, "read", "GET", f"/customers/{customer}", headers=context)
        if read is not None and read.status_code == 200:
            with self.tally.lock:
                self.tally.reads.append(read.headers["x-request-id"])
        if self.rng.random() < 0.3:
            contract = {
                "line_number": f"080-{self.rng.randint(1000, 9999)}-{self.rng.randint(1000, 9999)}",
                "plan": "5G ギガプラン",
                "device": {"model": "Pixel 9", "imei": f"{self.rng.randrange(10**15):015d}"},
                "billing": {"payment_method": "credit_card", "account_last4": "4242"},
            }
            self.call(
                client,
                "contract",
                "POST",
                f"/customers/{customer}/contracts",
                json=contract,
                headers=context,
            )
        if self.rng.random() < 0.2:
            self.call(
                client,
                "message",
                "POST",
                f"/customers/{customer}/messages",
                json=MESSAGE,
                headers={
                    **purpose(headers, "support", visit=visit),
                    "Idempotency-Key": f"soak-{uuid.uuid4()}",
                },
            )
        if self.rng.random() < 0.1:  # a purpose the role may not use: refused and recorded
            self.call(
                client,
                "refused",
                "GET",
                f"/customers/{customer}",
                headers=purpose(headers, "fraud_prevention"),
            )
        self.call(client, "close", "POST", f"/visits/{visit}/close", headers=headers)


class Billing(Terminal):
    """The billing system reads the customers' billing groups."""

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            token = self.call(
                client,
                "billing login",
                "POST",
                "/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": cast.BILLING.name,
                    "client_secret": cast.BILLING.secret,
                },
            )
            if token is None or token.status_code != 200:
                return
            headers = purpose(
                {"Authorization": f"Bearer {token.json()['access_token']}"}, "billing"
            )
            while not self.stop.wait(0.2):
                with self.tally.lock:
                    known = list(self.tally.customers)
                if not known:
                    continue
                customer, _phone = self.rng.choice(known)
                read = self.call(
                    client, "billing read", "GET", f"/customers/{customer}", headers=headers
                )
                if read is not None and read.status_code == 200:
                    with self.tally.lock:
                        self.tally.reads.append(read.headers["x-request-id"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """The process's children (``/proc``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def workers_rss(server: int) -> int:
    """The resident size of the server's worker processes (uvicorn's children), summed."""
    total = 0
    for child in children(server):
        try:
            total += _rss(child)
        except OSError:
            continue
    return total


def wait_until_up(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not come up")


def soak(database_url: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    migrate.upgrade(database_url)
    engine = create_sync_engine(database_url)
    cast.seed(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPVAULT_")}
    env.update(
        {
            "SHOPVAULT_DATABASE_URL": database_url,
            "SHOPVAULT_DATA_DIR": str(scratch / "data"),
            "SHOPVAULT_SEARCH_RATE_LIMIT": "100000/minute",
            "SHOPVAULT_MESSAGE_DAILY_CAP": "100000",
            "SHOPVAULT_LOG_LEVEL": "WARNING",
            **{
                f"SHOPVAULT_{name}_KEY": encode_key(secrets.token_bytes(32))
                for name in ("JWT", "MASTER", "INDEX")
            },
        }
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = scratch / "server.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [str(SHOPVAULT), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=scratch,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    tally = Tally()
    memory: list[tuple[float, int]] = []
    try:
        wait_until_up(base, server)
        staff = [cast.SALES, cast.MANAGER]
        terminals: list[Terminal] = [
            Terminal(base, staff[n % len(staff)], tally, seed=n) for n in range(args.terminals)
        ]
        terminals.append(Billing(base, cast.SALES, tally, seed=999))
        started = time.monotonic()
        for terminal in terminals:
            terminal.start()
        while (elapsed := time.monotonic() - started) < args.seconds:
            memory.append((round(elapsed, 1), workers_rss(server.pid)))
            time.sleep(min(5.0, max(0.5, args.seconds / 40)))
        memory.append((round(time.monotonic() - started, 1), workers_rss(server.pid)))
        for terminal in terminals:
            terminal.stop.set()
        for terminal in terminals:
            terminal.join(timeout=120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    verify = subprocess.run(
        [str(SHOPVAULT), "audit", "verify", "--full"],
        env=env,
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    missing_reads, missing_refusals = _missing_events(engine, tally)
    engine.dispose()
    warm = [rss for at, rss in memory if at >= args.seconds / 5]
    settled, final = (warm[0], warm[-1]) if warm else (0, 0)
    growth_ok = final <= max(settled * MAX_GROWTH_RATIO, settled + MAX_GROWTH_BYTES)
    checks = {
        "no_server_errors": not tally.server_errors,
        "every_read_recorded": not missing_reads,
        "every_refusal_recorded": not missing_refusals,
        "log_verifies": verify.returncode == 0,
        "memory_levels_off": bool(warm) and growth_ok,
    }
    return {
        "seconds": args.seconds,
        "terminals": args.terminals,
        "requests": sum(tally.statuses.values()),
        "statuses": dict(sorted(tally.statuses.items())),
        "customers": len(tally.customers),
        "reads": len(tally.reads),
        "refusals": len(tally.refusals),
        "server_errors": tally.server_errors[:20],
        "missing_read_events": missing_reads[:20],
        "missing_refusal_events": missing_refusals[:20],
        "verify": verify.stdout.strip()[-500:] or verify.stderr.strip()[-500:],
        # Ten samples of the workers' resident size over the run: {seconds: MiB}.
        "workers_rss_mib": {
            str(at): round(rss / 2**20, 1) for at, rss in memory[:: max(1, len(memory) // 10)]
        },
        "checks": checks,
        "ok": all(checks.values()),
    }


def _missing_events(engine: Any, tally: Tally) -> tuple[list[str], list[str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT request_id, action, outcome FROM access_event")
        ).all()
    seen = {(row.request_id, row.action, row.outcome) for row in rows}
    reads = [rid for rid in tally.reads if (rid, "read", "allowed") not in seen]
    refused = {row.request_id for row in rows if row.outcome == "denied"}
    refusals = [rid for rid in tally.refusals if rid not in refused]
    return reads, refusals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 120)))
    parser.add_argument("--terminals", type=int, default=8)
    args = parser.parse_args()
    base = os.environ.get("SHOPVAULT_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    scratch = Path(tempfile.mkdtemp(prefix="shopvault-soak-"))
    with postgres_empty(base) as database_url:
        summary = soak(database_url, args, scratch)
    report = json.dumps(summary, ensure_ascii=False, indent=2)
    (scratch / "soak.json").write_text(report, encoding="utf-8")
    print(report)
    print(
        f"soak: {'passed' if summary['ok'] else 'FAILED'}; report and server log in {scratch}",
        file=sys.stderr,
    )
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
