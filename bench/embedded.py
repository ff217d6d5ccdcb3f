"""``python -m bench.embedded``: the embedded audited read (SQLite, one server process) at
growing concurrency, to tell queueing from lock waits.

Run::

    .venv/bin/python -m bench.embedded                       # 1, 2, 4 and 8 connections
    .venv/bin/python -m bench.embedded --connections 1 8 --seconds 15

The world and the customers are those of ``make bench``'s embedded scenario. With one server
process every audited read holds SQLite's write lock (``BEGIN IMMEDIATE``) for its whole
transaction, so reads run one at a time whatever the concurrency: a fair queue gives
p99 ≈ connections × the time of one read. Far longer tails, with the CPU per read unchanged,
are reads waiting on the lock in SQLite's busy handler (which sleeps up to 100 ms between
tries, and lets a newcomer in first). Prints one line per concurrency and writes
``bench/results/embedded.json``.

``--spy N`` (needs py-spy: ``.venv/bin/pip install py-spy``) takes N ``py-spy dump``s of the
server during each load and counts its aiosqlite connection threads that are inside a SQLite
call without running: waiting for the write lock.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import bulk
from bench.measure import load
from bench.scenarios import LOAD_SETTINGS, read_target, scenario, start
from bench.seed import ROOT, environment, seed_world

OUT = ROOT / "bench" / "results" / "embedded.json"
# aiosqlite's connection thread runs each call at this line of its loop (0.22).
IN_SQLITE_CALL = "aiosqlite/core.py:63"


def _server_pid(session: int) -> str:
    children = subprocess.run(
        ["pgrep", "-P", str(session)], capture_output=True, text=True, check=False
    ).stdout.split()
    return children[0] if children else str(session)


def waiting_in_sqlite(pid: str, dumps: int, spy: str) -> list[int]:
    """Per ``py-spy dump``: connection threads inside a SQLite call and idle (lock waits)."""
    counts = []
    for _ in range(dumps):
        out = subprocess.run(
            [spy, "dump", "--pid", pid], capture_output=True, text=True, check=False
        ).stdout
        threads = out.split("\nThread ")[1:]
        counts.append(
            sum(1 for t in threads if "(idle)" in t.split("\n", 1)[0] and IN_SQLITE_CALL in t)
        )
        time.sleep(0.3)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.embedded", description=__doc__)
    p.add_argument("--connections", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--spy", type=int, default=0, metavar="N", help="py-spy dumps per load")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shopvault-emb-")))
        data = scratch / "data"
        data.mkdir(mode=0o700)
        env = {**environment(f"sqlite:///{data / 'shopvault.db'}", data), **LOAD_SETTINGS}
        world = seed_world(env)
        customers = bulk.seed_customers(
            env,
            bulk.Cohort(
                0, args.customers, world.store_id, world.sales.id, visit=True, contract=True
            ),
        )
        bulk.analyze(env["SHOPVAULT_DATABASE_URL"])
        target = read_target("embedded", world, customers)
        start(stack, scratch, target, env, 1)
        for connections in args.connections:
            if args.warmup:
                load(target, seconds=args.warmup, connections=connections, scratch=scratch)
            waits: list[int] = []
            spying = None
            if args.spy:
                spy = str(Path(sys.executable).with_name("py-spy"))
                pid = _server_pid(target.session)

                def watch(spy: str = spy, pid: str = pid, out: list[int] = waits) -> None:
                    time.sleep(1.0)
                    out.extend(waiting_in_sqlite(pid, args.spy, spy))

                spying = threading.Thread(target=watch)
                spying.start()
            m = load(target, seconds=args.seconds, connections=connections, scratch=scratch)
            if spying is not None:
                spying.join()
            row = scenario(m, connections=connections)
            if waits:
                row["waiting_for_the_lock"] = waits
            rows.append(row)
            fair = connections * 1000 / row["rps"] if row["rps"] else None
            print(
                f"{connections:>3} connections: {row['rps']:>7} ok/s  p50 {row['p50_ms']:>8} ms  "
                f"p99 {row['p99_ms']:>8} ms  (fair queue ≈ {fair and round(fair, 1)} ms)  "
                f"cpu/ok {row['server_cpu_ms_per_ok']} ms  loadavg {row['loadavg']}"
                + (f"  waiting in SQLite: {waits}" if waits else "")
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"customers": args.customers, "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
