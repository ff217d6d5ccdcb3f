"""``python -m bench.login_burst``: audited reads during a burst of bad logins, on SQLite.

Run::

    .venv/bin/python -m bench.login_burst                      # 10 s quiet, 10 s under attack
    .venv/bin/python -m bench.login_burst --seconds 20 --attackers 16 --connections 4

On SQLite every transaction takes the database's write lock (``BEGIN IMMEDIATE``), and every
audited read writes its access event. A login that checked its password (Argon2, a quarter of a
second by design) inside its transaction therefore stalled every read in the shop; the service
checks passwords with no transaction open, and this measures that it holds.

The world is the one of ``make bench`` (``bench.seed``: a store, a ``sales`` member, a customer
within an open visit, all made through the real API), in a fresh SQLite file. The real app is
served by uvicorn with one worker (one process serves a shop on SQLite), with
``SHOPVAULT_TRUSTED_PROXIES=127.0.0.1`` so that attackers can come from many addresses: each bad
login names an unknown login from a random ``X-Forwarded-For`` address, as a botnet would, so
that no rate limit stops it and every one runs Argon2 (against the dummy hash).

Two phases, each with the same read load (``bench.load``: ``--connections`` keep-alive
connections reading the customer back to back, each read an audited one; the default two keep a
single worker busy without queueing reads behind each other, so p99 shows stalls rather than a
queue): *quiet*, then *burst* with ``--attackers`` concurrent bad logins running all along.
It prints p50 and p99 of the reads for both phases and how many bad logins were answered (all
of them ``401``), and writes ``bench/results/login-burst.json``. The verdict: p99 of the reads
during the burst under ``--p99-budget-ms`` (200).

The machine is small and shared: Argon2 competes with the reads for the CPU (the service runs
it at a lower priority, a few at a time), so the burst adds latency even without any lock; the
quiet phase shows the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.measure import Measurement, load
from bench.seed import ROOT, environment, seed_real
from bench.serve import HOST, Target, check_answer, free_port, serve

RESULTS = ROOT / "bench" / "results" / "login-burst.json"


class Burst:
    """Bad logins, ``attackers`` at a time, in a thread of their own until stopped."""

    def __init__(self, port: int, attackers: int) -> None:
        self.url = f"http://{HOST}:{port}/auth/token"
        self.attackers = attackers
        self.statuses: Counter[int] = Counter()
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _attacker(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        while not self._stop.is_set():
            address = f"198.51.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            form = {
                "grant_type": "password",
                "username": f"nobody-{rng.getrandbits(48):012x}",
                "password": f"guess-{rng.getrandbits(64):016x}",
            }
            try:
                response = await client.post(
                    self.url, data=form, headers={"X-Forwarded-For": address}
                )
                self.statuses[response.status_code] += 1
            except httpx.HTTPError:
                self.failures += 1

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.attackers)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            await asyncio.gather(
                *(self._attacker(client, random.Random(n)) for n in range(self.attackers))
            )

    def __enter__(self) -> Burst:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)


def phase(name: str, m: Measurement, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"phase": name, **m.summary(), **(extra or {})}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.login_burst", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured reads per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured reads first")
    parser.add_argument(
        "--connections", type=int, default=2, help="readers (POS terminals reading back to back)"
    )
    parser.add_argument("--attackers", type=int, default=8, help="concurrent bad logins")
    parser.add_argument("--p99-budget-ms", type=float, default=200.0)
    parser.add_argument("--check", action="store_true", help="exit 1 when the budget is missed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shopvault-burst-")))
        data_dir = scratch / "data"
        data_dir.mkdir(mode=0o700)
        env = environment(f"sqlite:///{data_dir / 'shopvault.db'}", data_dir)
        env["SHOPVAULT_TRUSTED_PROXIES"] = HOST
        print("bench: fresh SQLite database; seeding it through the real API")
        read = seed_real(env)
        target = Target("real", "app.main:app", free_port(), read.path, read.headers)
        log_path = scratch / "server.log"
        log = stack.enter_context(log_path.open("wb"))
        target.session = stack.enter_context(serve(target.app, target.port, 1, env, log, log_path))
        check_answer(target)
        print(
            f"bench: served (1 worker); {args.connections} readers, {args.seconds:g}s quiet, "
            f"then {args.seconds:g}s with {args.attackers} concurrent bad logins"
        )
        load(target, seconds=args.warmup, connections=args.connections, scratch=scratch)
        quiet = load(target, seconds=args.seconds, connections=args.connections, scratch=scratch)
        print(f"bench: quiet: {quiet.summary()}")
        with Burst(target.port, args.attackers) as burst:
            time.sleep(1.0)  # the burst under way before the reads are measured
            during = load(
                target, seconds=args.seconds, connections=args.connections, scratch=scratch
            )
        attack = {
            "bad_logins": sum(burst.statuses.values()),
            "bad_login_statuses": {str(k): v for k, v in sorted(burst.statuses.items())},
            "bad_login_failures": burst.failures,
        }
        print(f"bench: burst: {during.summary()} {attack}")
    p99_ms = during.percentile(0.99) * 1000
    met = p99_ms < args.p99_budget_ms and during.errors == 0
    print(
        f"audited read p99: quiet {quiet.percentile(0.99) * 1000:.1f} ms, during the burst "
        f"{p99_ms:.1f} ms (budget < {args.p99_budget_ms:g} ms: {'met' if met else 'MISSED'})"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "started_at": started.isoformat(timespec="seconds"),
        "settings": {**vars(args), "cpus": os.cpu_count(), "host": HOST, "backend": "sqlite"},
        "phases": [phase("quiet", quiet), phase("burst", during, attack)],
        "p99_budget_met": met,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench: wrote {RESULTS.relative_to(ROOT)}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
