"""The scenarios of ``make bench``, each returning what it measured as plain data.

Loads go through ``bench.load`` (a process of its own) against apps served by uvicorn as
``shopvault serve`` serves them (``bench.serve``); the commands (``shopvault worker``,
``audit verify``, ``purge``) run as the operator would run them, in processes of their own with
the run's settings.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text

from app.db import create_sync_engine
from bench import bulk
from bench.bare_app import URL_ENV, create_bare_tables
from bench.measure import Measurement, load, pooled
from bench.outbox_sink import Sink
from bench.seed import ROOT, World, bench_database, environment, read_headers, seed_world
from bench.serve import Target, check_answer, child_env, free_port, serve, session_cpu_seconds

# Settings of the served app for load: one member stands for a chain's staff, so the per-caller
# limits and the bulk-read alert (which would rightly fire for one person reading thousands of
# customers) are raised out of the way; the alert rules are still evaluated on every append.
LOAD_SETTINGS = {
    "SHOPVAULT_SEARCH_RATE_LIMIT": "100000000/minute",
    "SHOPVAULT_ALERT_BULK_READ": "100000000/10minutes",
    # Three apps of 2 workers each stay up through the alternating rounds (shopvault, shopvault
    # without alerts, the bare app): 6 pools, within PostgreSQL's 100 connections.
    "SHOPVAULT_DB_POOL_SIZE": "12",
}


@dataclass
class Load:
    """How each load is run: warm-up, then ``seconds`` at ``connections``."""

    seconds: float
    warmup: float
    connections: int


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def start(
    stack: ExitStack, scratch: Path, target: Target, env: dict[str, str], workers: int
) -> None:
    log_path = scratch / f"server-{target.name}.log"
    log = stack.enter_context(log_path.open("ab"))
    target.session = stack.enter_context(
        serve(target.app, target.port, workers, env, log, log_path)
    )
    check_answer(target)


def measured(target: Target, how: Load, scratch: Path) -> Measurement:
    if how.warmup > 0:
        load(target, seconds=how.warmup, connections=how.connections, scratch=scratch)
    return load(target, seconds=how.seconds, connections=how.connections, scratch=scratch)


def scenario(m: Measurement, **extra: Any) -> dict[str, Any]:
    s = m.summary()
    return {
        "rps": s["rps"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "errors": s["errors"],
        "server_cpu_ms_per_ok": s["server_cpu_ms_per_ok"],
        "loadavg": s["loadavg_1m"],
        **extra,
    }


# --- reads ---------------------------------------------------------------------------------------


def read_target(name: str, world: World, customers: Sequence[bulk.Seeded]) -> Target:
    """``GET /customers/{id}`` by ``sales``, purpose ``contract``, within the customer's visit."""
    headers = read_headers(world.sales, "{1}")
    targets = [(c.customer_id, c.visit_id or "") for c in customers]
    return Target(name, "app.main:app", free_port(), "/customers/{0}", headers, targets=targets)


def bare_target(
    name: str,
    url: str,
    like: Target,
    customers: Sequence[bulk.Seeded],
    *,
    port: int | None = None,
) -> Target:
    """The bare app's read under the load ``like`` is (its path and headers, the visits of
    ``customers``), of as many customers of its own, whose tables are made and seeded here."""
    create_bare_tables(url)
    ids = bulk.seed_bare_customers(url, len(customers))
    return Target(
        name,
        "bench.bare_app:app",
        port or free_port(),
        like.path,
        like.headers,  # the same headers: it ignores them, but parses them too
        targets=[(b, c.visit_id or "") for b, c in zip(ids, customers, strict=True)],
    )


@dataclass
class ReadWorld:
    """A fresh database seeded for the audited read: ``customers`` each within an open visit,
    with a contract; its scratch directory and database go when the stack closes."""

    scratch: Path
    url: str
    env: dict[str, str]
    world: World
    customers: list[bulk.Seeded]


def read_world(stack: ExitStack, base_url: str, customers: int) -> ReadWorld:
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shopvault-")))
    url = stack.enter_context(bench_database(base_url))
    env = {**environment(url, scratch / "data"), **LOAD_SETTINGS}
    world = seed_world(env)
    cohort = bulk.Cohort(0, customers, world.store_id, world.sales.id, visit=True, contract=True)
    return ReadWorld(scratch, url, env, world, bulk.seed_customers(env, cohort))


def audited_read(
    env: dict[str, str],
    world: World,
    customers: Sequence[bulk.Seeded],
    *,
    how: Load,
    rounds: int,
    workers: int,
    scratch: Path,
) -> dict[str, Any]:
    """The audited read against the bare app, ``rounds`` alternating rounds, same load."""
    url = env["SHOPVAULT_DATABASE_URL"]
    real = read_target("real-read", world, customers)
    quiet = read_target("real-read-no-alerts", world, customers)
    quiet.app = "bench.app_without_alerts:app"
    bare = bare_target("bare-read", url, real, customers)
    bulk.analyze(url)
    rows: list[tuple[str, int, Measurement]] = []
    with ExitStack() as stack:
        start(stack, scratch, real, env, workers)
        start(stack, scratch, quiet, env, workers)
        start(stack, scratch, bare, {URL_ENV: url}, workers)
        for round_ in range(1, rounds + 1):
            order = (real, quiet, bare) if round_ % 2 else (bare, quiet, real)
            for target in order:
                m = measured(target, how, scratch)
                rows.append((target.name, round_, m))
                print(f"bench: audited read, round {round_}, {target.name}: {scenario(m)}")
    shopvault = pooled([m for name, _, m in rows if name == "real-read"])
    without_alerts = pooled([m for name, _, m in rows if name == "real-read-no-alerts"])
    baseline = pooled([m for name, _, m in rows if name == "bare-read"])
    rounds_out = [{"app": name, "round": r, **scenario(m)} for name, r, m in rows]
    return {
        "audited_read": scenario(shopvault, customers=len(customers), rounds=rounds_out),
        "bare_read": scenario(baseline, customers=len(customers)),
        # Issue 13: the same app with no alert rule evaluated; the overhead ratio is rps with
        # the rules over rps without them (1.0: no cost), CPU per answer likewise.
        "audited_read_without_alerts": scenario(without_alerts, customers=len(customers)),
        "alert_overhead_ratio": round(shopvault.rate / without_alerts.rate, 3)
        if without_alerts.rate
        else None,
        "alert_cpu_per_ok_ratio": round(shopvault.cpu_per_ok / without_alerts.cpu_per_ok, 3)
        if without_alerts.cpu_per_ok
        else None,
        "audited_read_ratio": round(shopvault.rate / baseline.rate, 3) if baseline.rate else None,
        "audited_read_p99_ratio": round(shopvault.percentile(0.99) / baseline.percentile(0.99), 3),
        "server_cpu_per_ok_ratio": round(shopvault.cpu_per_ok / baseline.cpu_per_ok, 3)
        if baseline.cpu_per_ok
        else None,
    }


def embedded_read(
    env: dict[str, str],
    world: World,
    customers: Sequence[bulk.Seeded],
    *,
    how: Load,
    scratch: Path,
) -> dict[str, Any]:
    """The audited read on the SQLite default: one server process, as a shop would run it."""
    target = read_target("embedded-read", world, customers)
    with ExitStack() as stack:
        start(stack, scratch, target, env, 1)
        m = measured(target, how, scratch)
    return scenario(m, customers=len(customers), connections=how.connections, workers=1)


def search(
    env: dict[str, str],
    world: World,
    customers: Sequence[bulk.Seeded],
    population: int,
    *,
    how: Load,
    workers: int,
    scratch: Path,
) -> dict[str, Any]:
    """``POST /customers/search`` by phone (national form), random customers of the population."""
    headers = {**world.sales.authorization, "X-Access-Purpose": "contract"}
    target = Target(
        f"search-{population}",
        "app.main:app",
        free_port(),
        "/customers/search",
        headers,
        method="POST",
        body='{"phone": "{0}"}',
        targets=[(c.phone,) for c in customers],
    )
    with ExitStack() as stack:
        start(stack, scratch, target, env, workers)
        m = measured(target, how, scratch)
    return scenario(m, customers=population, connections=how.connections)


# --- the outbox ----------------------------------------------------------------------------------


def _statuses(url: str) -> dict[str, int]:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT status, count(*) FROM message GROUP BY status")
            ).all()
    finally:
        engine.dispose()
    return {str(status): int(n) for status, n in rows}


def outbox(
    env: dict[str, str],
    world: World,
    customers: Sequence[bulk.Seeded],
    *,
    workers: int,
    timeout: float,
    scratch: Path,
) -> dict[str, Any]:
    """Queued urgent emails delivered by ``workers`` ``shopvault worker`` processes to a local
    SMTP sink; the rate is read at the sink, from the first message to the last."""
    url = env["SHOPVAULT_DATABASE_URL"]
    ids = bulk.seed_outbox(
        env,
        [c.customer_id for c in customers],
        manager_id=world.manager.id,
        store_id=world.store_id,
    )
    with Sink() as sink:
        worker_env = {
            **env,
            "SHOPVAULT_EMAIL_SENDER": "info@shop.example.jp",
            "SHOPVAULT_SMTP_HOST": "127.0.0.1",
            "SHOPVAULT_SMTP_PORT": str(sink.port),
        }
        started = time.monotonic()
        sink_cpu = resource.getrusage(resource.RUSAGE_SELF)
        processes = []
        with ExitStack() as stack:
            for n in range(workers):
                log = stack.enter_context((scratch / f"worker-{n}.log").open("ab"))
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "app.cli", "worker"],
                        env=child_env(worker_env),
                        cwd=ROOT,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
            statuses: dict[str, int] = {}
            workers_cpu = 0.0
            try:
                while time.monotonic() - started < timeout:
                    time.sleep(0.5)
                    statuses = _statuses(url)
                    if not statuses.get("queued") and not statuses.get("scheduled"):
                        break
                    if any(p.poll() is not None for p in processes):
                        break
                workers_cpu = sum(session_cpu_seconds(p.pid) for p in processes)
            finally:
                for process in processes:
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                for process in processes:
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait(10)
        wall = time.monotonic() - started
        used = resource.getrusage(resource.RUSAGE_SELF)
        sink_seconds = used.ru_utime + used.ru_stime - sink_cpu.ru_utime - sink_cpu.ru_stime
        tally = sink.tally
        received, duplicates = tally.received, tally.duplicates
        span = (tally.last - tally.first) if tally.first is not None and tally.last else 0.0
    rate = (received - 1) / span if received > 1 and span > 0 else None
    return {
        "messages": len(ids),
        "workers": workers,
        "received": received,
        "duplicates": duplicates,
        "statuses": statuses,
        "seconds_first_to_last": round(span, 2),
        "seconds_wall": round(wall, 2),
        "messages_per_s": round(rate, 1) if rate is not None else None,
        "completed": received >= len(ids),
        # Where the CPU went: the workers' processes, and this process (the sink, mostly).
        "workers_cpu_ms_per_message": round(workers_cpu * 1000 / received, 3) if received else None,
        "sink_cpu_ms_per_message": round(sink_seconds * 1000 / received, 3) if received else None,
        "loadavg": loadavg(),
    }


# --- commands ------------------------------------------------------------------------------------


def _command(env: dict[str, str], *argv: str, timeout: float) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        env=child_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def verify(env: dict[str, str], *, timeout: float) -> dict[str, Any]:
    """``shopvault audit verify --full``, timed from start to exit."""
    code, out, err, seconds = _command(env, "audit", "verify", "--full", timeout=timeout)
    try:
        result = json.loads(out)
    except json.JSONDecodeError:
        result = {}
    checked = int(result.get("checked") or 0)
    return {
        "events": checked,
        "ok": bool(result.get("ok")) and code == 0,
        "exit_status": code,
        "problems": result.get("problems"),
        "seconds": round(seconds, 2),
        "events_per_s": round(checked / seconds, 1) if seconds and checked else None,
        "loadavg": loadavg(),
        **({"stderr": err.strip().splitlines()[-1:]} if code else {}),
    }


def _still_there(url: str, ids: Sequence[str]) -> int:
    """How many of ``ids`` are still customers that are not erased."""
    statement = text(
        "SELECT count(*) FROM customer WHERE state <> 'erased' AND id IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            return sum(
                int(connection.execute(statement, {"ids": list(ids[i : i + 10_000])}).scalar_one())
                for i in range(0, len(ids), 10_000)
            )
    finally:
        engine.dispose()


def purge(
    env: dict[str, str],
    world: World,
    *,
    start_index: int,
    count: int,
    processes: int,
    timeout: float,
) -> dict[str, Any]:
    """``shopvault purge`` over ``count`` customers due for disposal. The command is asked first
    on the database as it is; when it refuses, the scenario is skipped and says why."""
    code, _out, err, _seconds = _command(env, "purge", timeout=timeout)
    if code != 0:
        reason = " ".join(err.strip().splitlines()[-1:]) or f"exit status {code}"
        return {
            "skipped": True,
            "note": f"`shopvault purge` refused (exit {code}), so nothing was measured: {reason}",
            "customers_per_s": None,
        }
    url = env["SHOPVAULT_DATABASE_URL"]
    due = bulk.seed_customers(
        env,
        bulk.Cohort(start_index, count, world.store_id, world.sales.id, due=True),
        processes=processes,
    )
    bulk.analyze(url)
    ids = [c.customer_id for c in due]
    before = _still_there(url, ids)
    code, _out, err, seconds = _command(env, "purge", timeout=timeout)
    disposed = before - _still_there(url, ids)
    result: dict[str, Any] = {
        "skipped": False,
        "customers_due": count,
        "disposed": disposed,
        "exit_status": code,
        "seconds": round(seconds, 2),
        "customers_per_s": round(disposed / seconds, 1) if disposed and seconds else None,
        "loadavg": loadavg(),
    }
    if code != 0 or disposed < count:
        result["note"] = (
            f"purge exited {code} and disposed {disposed} of the {count} customers made due "
            "(registered 6 years ago, only contract ended 4 years ago, last visit 4 years ago)"
            + (f": {err.strip().splitlines()[-1]}" if code and err.strip() else "")
        )
    return result
