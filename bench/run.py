"""``make bench``: the audited customer read against a bare app, measured in one run.

Run::

    make bench                                   # = .venv/bin/python -m bench.run
    .venv/bin/python -m bench.run --seconds 15 --connections 32 --workers 2

PostgreSQL comes from ``SHOPVAULT_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``): the run creates a fresh database
``shopvault_bench_<random>`` next to it and drops it at the end. It migrates that database, makes
a store, a ``sales`` member and a customer within an open visit through the real API (fresh
``SHOPVAULT_*_KEY`` values for the run), and adds the bare app's two tables and one row.

Both apps are then served by uvicorn (``--workers 2``, loopback, free ports): the real one as
``app.main:app`` with the run's settings in its environment, the bare one (``bench.bare_app``:
select by primary key, insert one audit row, commit) as ``bench.bare_app:app``. Each round warms
up and then loads each app in turn with the same load generator (``bench.load``, a process of
its own) for the same time at the same concurrency; the second round goes in reverse order.

Reading the output: one line per app and round, then ``all`` (the rounds pooled: requests/s
over the summed load windows, percentiles over every latency). ``ok/s`` counts the 2xx answers
that arrived within the load window (requests in flight at its end are drained and their
latencies kept, but they do not count as throughput); ``errors`` counts non-2xx answers and
broken or unanswered requests. The verdict compares the pooled numbers: real/bare throughput
must be at least 0.8 and real/bare p99 at most 1.5 (the budget of issue 3).

The machine is small and shared, so absolute numbers drift from run to run: only ratios measured
within one run mean something, and ``loadavg`` shows how busy the machine was. ``cpu ms/ok`` is
the CPU time the app's server processes spent per answered request, the steadiest number on a
busy machine; its real/bare ratio (printed, not budgeted) tells the app's own extra work apart
from waiting (locks, round trips). The table, with the settings, per-round numbers and the load
generator's own CPU per request, also goes to ``bench/results/latest.json``.

Exit status 0 when the run completed (``--check``: 1 also when the budget is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bare_app import URL_ENV, create_bare_tables
from bench.measure import Measurement, load, pooled
from bench.seed import ROOT, RealTarget, bench_database, environment, seed_real
from bench.serve import HOST, Target, check_answer, free_port, serve

POSTGRES_ENV = "SHOPVAULT_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
RESULTS = ROOT / "bench" / "results" / "latest.json"
MIN_THROUGHPUT_RATIO = 0.8
MAX_P99_RATIO = 1.5


def warm_and_measure(target: Target, args: argparse.Namespace, scratch: Path) -> Measurement:
    if args.warmup > 0:
        load(target, seconds=args.warmup, connections=args.connections, scratch=scratch)
    return load(target, seconds=args.seconds, connections=args.connections, scratch=scratch)


# --- reporting ----------------------------------------------------------------------------------


def verdict(real: Measurement, bare: Measurement) -> dict[str, Any]:
    throughput = real.rate / bare.rate if bare.rate else float("nan")
    p99 = real.percentile(0.99) / bare.percentile(0.99)
    return {
        "throughput_ratio": round(throughput, 3),
        "p99_ratio": round(p99, 3),
        "server_cpu_per_ok_ratio": round(real.cpu_per_ok / bare.cpu_per_ok, 3)
        if bare.cpu_per_ok
        else None,
        "throughput_ok": throughput >= MIN_THROUGHPUT_RATIO,
        "p99_ok": p99 <= MAX_P99_RATIO,
        "budget_met": throughput >= MIN_THROUGHPUT_RATIO and p99 <= MAX_P99_RATIO,
    }


def table(rows: list[tuple[str, str, Measurement]], ratios: dict[str, Any]) -> str:
    lines = [
        f"{'app':<5} {'round':<5} {'ok/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'cpu ms/ok':>9} {'loadavg':>8}"
    ]
    for app, round_, m in rows:
        s = m.summary()
        lines.append(
            f"{app:<5} {round_:<5} {s['requests_per_second']:>8} {s['p50_ms']:>8} "
            f"{s['p99_ms']:>8} {s['errors']:>7} {s['server_cpu_ms_per_ok']:>9} "
            f"{s['loadavg_1m']:>8}"
        )
    mark = {True: "ok", False: "MISSED"}
    lines.append(
        f"real/bare: throughput {ratios['throughput_ratio']:.2f}x "
        f"(budget >= {MIN_THROUGHPUT_RATIO}x: {mark[ratios['throughput_ok']]}), "
        f"p99 {ratios['p99_ratio']:.2f}x (budget <= {MAX_P99_RATIO}x: {mark[ratios['p99_ok']]})"
    )
    if ratios["server_cpu_per_ok_ratio"] is not None:
        lines.append(
            f"server CPU per answered request, real/bare: {ratios['server_cpu_per_ok_ratio']:.2f}x"
            " (information, not budget)"
        )
    lines.append("budget " + ("MET" if ratios["budget_met"] else "NOT MET"))
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="The audited customer read against a bare app (see the module docstring).",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="measured load per app/round")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured load before each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers per app")
    parser.add_argument("--rounds", type=int, default=2, help="alternating order each round")
    parser.add_argument("--check", action="store_true", help="exit 1 when the budget is missed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base_url = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL
    started = datetime.now(UTC)
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shopvault-bench-")))
        database_url = stack.enter_context(bench_database(base_url))
        print("bench: fresh database created; seeding it through the real API")
        env = environment(database_url, scratch / "data")
        real_read: RealTarget = seed_real(env)
        bare_id = create_bare_tables(database_url)
        # The bare app gets the same request headers: it ignores them, but parses them too.
        headers = real_read.headers
        targets = [
            Target("real", "app.main:app", free_port(), real_read.path, headers),
            Target("bare", "bench.bare_app:app", free_port(), f"/customers/{bare_id}", headers),
        ]
        server_env = {"real": env, "bare": {URL_ENV: database_url}}
        for target in targets:
            log_path = scratch / f"server-{target.name}.log"
            log = stack.enter_context(log_path.open("wb"))
            target.session = stack.enter_context(
                serve(target.app, target.port, args.workers, server_env[target.name], log, log_path)
            )
            check_answer(target)
        print(
            f"bench: both apps up ({args.workers} workers each); {args.rounds} rounds of "
            f"{args.warmup:g}s warm-up + {args.seconds:g}s at {args.connections} connections"
        )
        rows: list[tuple[str, str, Measurement]] = []
        for round_ in range(1, args.rounds + 1):
            order = targets if round_ % 2 else list(reversed(targets))
            for target in order:
                m = warm_and_measure(target, args, scratch)
                rows.append((target.name, str(round_), m))
                print(f"bench: round {round_} {target.name}: {m.summary()}")
    real = pooled([m for app, _, m in rows if app == "real"])
    bare = pooled([m for app, _, m in rows if app == "bare"])
    rows += [("real", "all", real), ("bare", "all", bare)]
    ratios = verdict(real, bare)
    print(table(rows, ratios))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "started_at": started.isoformat(timespec="seconds"),
        "settings": {**vars(args), "cpus": os.cpu_count(), "host": HOST},
        "runs": [{"app": app, "round": r, **m.summary()} for app, r, m in rows],
        "real": real.summary(),
        "bare": bare.summary(),
        "ratios": ratios,
        "budget": {"min_throughput_ratio": MIN_THROUGHPUT_RATIO, "max_p99_ratio": MAX_P99_RATIO},
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench: wrote {RESULTS.relative_to(ROOT)}")
    return 1 if args.check and not ratios["budget_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
