"""``python -m bench.profile``: where the audited read's time goes, under load.

Run::

    .venv/bin/pip install py-spy          # once: the sampling profiler (PyPI)
    .venv/bin/python -m bench.profile     # 20 s of load, 32 connections, 2 workers, PostgreSQL

The world of ``make bench`` (a fresh PostgreSQL database, ``--customers`` customers seeded in
bulk, each within an open visit, with a contract) is served by uvicorn; while the load generator
reads random customers as ``sales`` (purpose ``contract``), ``py-spy record --subprocesses``
samples every server process (the thread holding the GIL: the one doing Python work). Each sample
(a whole stack) goes into one bucket: the first of ``STEPS`` that any of its frames is in (so
that the SQL of the event append counts as the event append), else the ``LAYERS`` bucket of its
innermost frame that has one. Each bucket's share of the samples becomes CPU milliseconds per
answered request with the servers' measured CPU time.

Before the load, the same read (and the bare app's) is made in process a few hundred times with
the engine's events counted: round trips per request (BEGIN, statements, COMMIT; the access
query runs on the snapshot reads and is counted from them; the events' append runs on the
driver inside the group commit's BEGIN and COMMIT), and the time of one round trip on this
machine (``SELECT 1``).

``--bare`` profiles the bare app's read the same way (the floor). Writes
``bench/results/profile.json`` (``profile-bare.json``) and the raw stacks next to it
(``profile-raw.txt``: one stack per line, for flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Engine

from app.db import async_url
from app.main import create_app
from bench import bulk
from bench.bare_app import URL_ENV, create_bare_app, create_bare_tables
from bench.measure import load
from bench.run import DEFAULT_POSTGRES_URL, POSTGRES_ENV
from bench.scenarios import bare_target, read_target, read_world, start
from bench.seed import ROOT, read_headers

OUT = ROOT / "bench" / "results"

# Where a request's CPU goes. A sample belongs to the first of these steps that any of its frames
# is in (so the SQL of the event append counts as the append) ...
STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("alert evaluation (after the answer)", ("app/audit/alerts.py",)),
    ("checkpoints (periodic)", ("app/audit/integrity.py", "app/audit/checkpoints.py")),
    (
        "event append: seal, INSERT, COMMIT",
        ("UnitOfWork.commit (", "app/audit/repository.py"),
    ),
    ("JWT decoding and checks", ("jose/", "app/auth/tokens.py")),
    ("decryption (data keys, fields)", ("app/crypto.py", "app/vault.py", "cryptography/")),
    ("response: validation + JSON", ("serialize_response", "JSONResponse", "render (")),
)
# ... and otherwise to the layer of its innermost frame that is in one of these.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging (structured log lines)", ("logging/", "app/logs.py")),
    ("asyncpg driver (round trips' CPU)", ("asyncpg/",)),
    (
        "SQLAlchemy: statement building (compile, cache keys)",
        ("sqlalchemy/sql/compiler.py", "sqlalchemy/sql/cache_key.py", "sqlalchemy/sql/traversals"),
    ),
    ("SQLAlchemy: execution, ORM rows, session", ("sqlalchemy/",)),
    ("pydantic: request models, headers", ("pydantic",)),
    ("app code (policy, access pipeline, views)", ("app/",)),
    ("FastAPI dependency resolution", ("fastapi/dependencies/",)),
    ("framework: FastAPI/Starlette routing, middleware", ("fastapi/", "starlette/", "anyio/")),
    ("HTTP server: uvicorn, httptools", ("uvicorn/", "httptools", "h11")),
)
OTHER = "event loop, other"
BUCKETS = (*(name for name, _ in STEPS), *(name for name, _ in LAYERS), OTHER)


def bucket_of(frames: Sequence[str]) -> str:
    for name, needles in STEPS:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    for frame in reversed(frames):
        for name, needles in LAYERS:
            if any(needle in frame for needle in needles):
                return name
    return OTHER


# A thread parked here is waiting, not working (py-spy does not always tell).
IDLE_LEAVES = (
    "Condition.wait",
    "Queue.get",
    "Connection._recv",
    "select (",
    "_run_once",
    "_worker (concurrent/futures/thread.py",
)


def read_raw(path: Path) -> Counter[str]:
    """py-spy's raw output: one stack per line, ``frame;frame;… count``."""
    samples: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if stack and not frames[-1].startswith(("process ", *IDLE_LEAVES)):
            samples[bucket_of(frames)] += int(count)
    return samples


# --- round trips ------------------------------------------------------------------------------


@contextmanager
def counting(engine: Engine) -> Iterator[Counter[str]]:
    counts: Counter[str] = Counter()

    def on_begin(_conn: Any) -> None:
        counts["BEGIN"] += 1

    def on_commit(_conn: Any) -> None:
        counts["COMMIT"] += 1

    def on_rollback(_conn: Any) -> None:
        counts["ROLLBACK"] += 1

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        counts[statement.split(None, 1)[0].upper()] += 1

    hooks = [
        ("begin", on_begin),
        ("commit", on_commit),
        ("rollback", on_rollback),
        ("before_cursor_execute", on_execute),
    ]
    for name, hook in hooks:
        event.listen(engine, name, hook)
    try:
        yield counts
    finally:
        for name, hook in hooks:
            event.remove(engine, name, hook)


def round_trips(
    env: dict[str, str], world: Any, customers: Sequence[bulk.Seeded], n: int
) -> dict[str, Any]:
    """Statements per request of the audited read and of the bare app's, counted in process."""
    import warnings

    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

    from bench.seed import settings_of

    url = env["SHOPVAULT_DATABASE_URL"]
    picked = random.Random(1).sample(list(customers), min(n, len(customers)))
    out: dict[str, Any] = {}
    app = create_app(settings_of(env))
    with TestClient(app) as client:
        engine = app.state.runtime.engine.sync_engine
        reads = app.state.runtime.snapshot_reads
        before = reads.statements
        with counting(engine) as counts:
            for c in picked:
                headers = read_headers(world.sales, c.visit_id or "")
                response = client.get(f"/customers/{c.customer_id}", headers=headers)
                assert response.status_code == 200, response.text
        # The access query runs on the snapshot reads, beside SQLAlchemy's engine.
        counts["snapshot read"] = reads.statements - before
        out["audited_read"] = {k: round(v / len(picked), 2) for k, v in sorted(counts.items())}
    bare_id = create_bare_tables(url)
    bare = create_bare_app(url)
    with TestClient(bare) as client:
        engine = bare.state.engine.sync_engine
        with counting(engine) as counts:
            for _ in picked:
                assert client.get(f"/customers/{bare_id}").status_code == 200
        out["bare_read"] = {k: round(v / len(picked), 2) for k, v in sorted(counts.items())}
    out["one_round_trip_ms"] = asyncio.run(_select_one(url))
    return out


async def _select_one(url: str) -> dict[str, float]:
    dsn = async_url(url).replace("postgresql+asyncpg", "postgresql")
    connection = await asyncpg.connect(dsn)
    try:
        times = []
        for _ in range(300):
            began = time.perf_counter()
            await connection.fetchval("SELECT 1")
            times.append((time.perf_counter() - began) * 1000)
    finally:
        await connection.close()
    times.sort()
    return {"p50": round(statistics.median(times), 3), "p90": round(times[269], 3)}


# --- the run ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0, help="profiled load")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--requests", type=int, default=200, help="in-process, for round trips")
    p.add_argument(
        "--bare", action="store_true", help="profile the bare app's read instead (the floor)"
    )
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("bench.profile: py-spy is needed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    import os

    base = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL
    args.out.mkdir(parents=True, exist_ok=True)
    name = "profile-bare" if args.bare else "profile"
    raw = args.out / f"{name}-raw.txt"
    with ExitStack() as stack:
        read = read_world(stack, base, args.customers)
        bulk.analyze(read.url)
        trips = round_trips(read.env, read.world, read.customers, args.requests)
        print(f"bench.profile: round trips per request: {trips}")
        target = read_target("profiled-read", read.world, read.customers)
        server_env = read.env
        if args.bare:
            target = bare_target(
                "profiled-bare", read.url, target, read.customers, port=target.port
            )
            server_env = {URL_ENV: read.url}
        start(stack, read.scratch, target, server_env, args.workers)
        if args.warmup:
            load(target, seconds=args.warmup, connections=args.connections, scratch=read.scratch)
        spying = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(target.session),
                "--subprocesses",
                "--rate",
                str(args.rate),
                "--duration",
                str(int(args.seconds)),
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        measured = load(
            target, seconds=args.seconds, connections=args.connections, scratch=read.scratch
        )
        _, err = spying.communicate(timeout=args.seconds + 60)
        if spying.returncode != 0:
            print(err.decode(errors="replace"), file=sys.stderr)
            return 1
    samples = read_raw(raw)
    total = sum(samples.values())
    cpu_per_ok = measured.cpu_per_ok * 1000
    rows = [
        {
            "bucket": name,
            "share": round(samples[name] / total, 4),
            "cpu_ms_per_request": round(cpu_per_ok * samples[name] / total, 3),
        }
        for name in BUCKETS
        if samples[name]
    ]
    report = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "load": measured.summary(),
        "server_cpu_ms_per_request": round(cpu_per_ok, 3),
        "samples": total,
        "buckets": rows,
        "round_trips": trips,
    }
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"load: {measured.summary()}")
    print(f"{'where':<56} {'share':>6} {'CPU ms/req':>10}")
    for row in rows:
        print(f"{row['bucket']:<56} {row['share']:>6.1%} {row['cpu_ms_per_request']:>10}")
    print(f"{'all (server CPU per answered request)':<56} {1:>6.0%} {round(cpu_per_ok, 3):>10}")
    print(f"bench.profile: wrote {args.out / (name + '.json')} and {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
