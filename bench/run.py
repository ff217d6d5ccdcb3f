"""``make bench``: every heavy path of shopvault, measured in one run; ``bench/results.json``.

Run::

    make bench                                   # = .venv/bin/python -m bench.run
    .venv/bin/python -m bench.run --seconds 15 --connections 32 --workers 2
    .venv/bin/python -m bench.run --help         # sizes, loads, where the results go
    .venv/bin/python -m bench.run --only outbox --out /tmp/outbox.json   # one scenario

PostgreSQL comes from ``SHOPVAULT_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``): the run creates a fresh database
``shopvault_bench_<random>`` next to it and drops it at the end; the embedded scenario uses a
SQLite file in a temporary directory. Each database is migrated and given a store, a ``sales``
member and a ``manager`` through the real CLI and API (fresh ``SHOPVAULT_*_KEY`` values for the
run); customers, access events and queued messages are seeded in bulk (``bench.bulk``: rows
built and sealed by the service's own code, written with COPY), never through the API.

The scenarios, in the order they run:

1. ``embedded_audited_read`` — SQLite, one server process, ``--embedded-connections``;
2. ``search`` at ``--search-small`` customers — ``POST /customers/search`` by phone;
3. ``audited_read`` against ``bare_read`` — ``GET /customers/{id}`` by ``sales`` with purpose
   ``contract`` and the customer's open visit, random customers out of ``--read-customers``,
   both apps served as ``shopvault serve`` serves (a listening socket per worker, so that the
   connections spread) with ``--workers`` each, ``--rounds`` alternating rounds;
4. ``outbox`` — ``--messages`` queued emails, ``--outbox-workers`` ``shopvault worker``
   processes, a local SMTP sink (aiosmtpd) counting Message-IDs (``duplicates``);
5. ``search`` at ``--search-large`` customers (the same search, the population grown in bulk);
6. ``verify`` — ``shopvault audit verify --full`` over ``--events`` events (bulk-sealed chains
   plus the events the run itself wrote);
7. ``purge`` — ``shopvault purge`` over ``--purge-customers`` customers due; skipped, with the
   reason in the JSON, when the command refuses.

Each load is a warm-up and then ``--seconds`` at the given connections from the load generator
(``bench.load``, a process of its own). ``rps`` counts the 2xx answers within the window;
``errors`` counts non-2xx answers and broken or unanswered requests; ``loadavg`` is the
machine's 1-minute load average when the scenario ended. The machine is small and shared: only
ratios measured within one run mean something. ``server_cpu_ms_per_ok`` is the CPU time the
app's server processes spent per answered request, the steadiest number on a busy machine.

``--only SCENARIO[,SCENARIO]`` runs some of them (``embedded``, ``search``, ``audited_read``,
``outbox``, ``verify``, ``purge``), seeding only what those need; pair it with ``--out`` so that
a partial run does not replace ``bench/results.json``. Keys of scenarios not run are absent and
their targets "not measured".

Exit status 0 when the run completed (``--check``: 1 also when a target is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import bulk, scenarios
from bench.scenarios import LOAD_SETTINGS, Load
from bench.seed import ROOT, bench_database, environment, seed_world
from bench.serve import HOST

POSTGRES_ENV = "SHOPVAULT_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
RESULTS = ROOT / "bench" / "results.json"

# The targets of issue 12, on this machine: (key, comparison, bound).
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("audited_read_ratio", ">=", 1.2),
    ("audited_read_p99_ratio", "<=", 1.0),
    ("search_scaling_ratio", "<=", 1.3),
    ("embedded_audited_read.p99_ms", "<=", 150.0),
    ("verify_events_per_s", ">=", 100_000.0),
    ("outbox_messages_per_s", ">=", 300.0),
    ("duplicates", "<=", 0.0),
    ("purge_customers_per_s", ">=", 1_000.0),
)

# What ``--only`` may name, in the order they run.
SCENARIOS = ("embedded", "search", "audited_read", "outbox", "verify", "purge")


def _scenarios(text: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(names - set(SCENARIOS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Every heavy path of shopvault in one run (see the module docstring).",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="measured load per app and round")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured load before each")
    p.add_argument("--connections", type=int, default=32, help="audited read against bare")
    p.add_argument("--workers", type=int, default=2, help="server workers per app (PostgreSQL)")
    p.add_argument("--rounds", type=int, default=2, help="audited read: alternating rounds")
    p.add_argument("--read-customers", type=int, default=100_000)
    p.add_argument("--search-small", type=int, default=10_000, help="customers")
    p.add_argument("--search-large", type=int, default=1_000_000, help="customers")
    p.add_argument("--search-connections", type=int, default=8)
    p.add_argument("--embedded-customers", type=int, default=10_000)
    p.add_argument("--embedded-connections", type=int, default=8)
    p.add_argument("--events", type=int, default=1_000_000, help="in the log at verification")
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--outbox-workers", type=int, default=2)
    p.add_argument("--outbox-timeout", type=float, default=240.0, help="seconds")
    p.add_argument("--purge-customers", type=int, default=100_000)
    p.add_argument("--processes", type=int, default=2, help="for bulk seeding")
    p.add_argument("--out", type=Path, default=RESULTS, help="the results file")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument(
        "--only",
        type=_scenarios,
        default=frozenset(SCENARIOS),
        metavar="SCENARIO[,SCENARIO]",
        help=f"run only these ({', '.join(SCENARIOS)}); default: all",
    )
    args = p.parse_args(argv)
    if args.only != frozenset(SCENARIOS) and args.out == RESULTS:
        p.error("--only writes a partial run: give it an --out other than bench/results.json")
    if not args.search_small <= args.read_customers <= args.search_large:
        p.error("need --search-small <= --read-customers <= --search-large")
    if args.messages > args.read_customers:
        p.error("need --messages <= --read-customers (one message per customer)")
    return args


def _lookup(results: dict[str, Any], key: str) -> Any:
    value: Any = results
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def targets_met(results: dict[str, Any]) -> dict[str, bool | None]:
    met: dict[str, bool | None] = {}
    for key, op, bound in TARGETS:
        value = _lookup(results, key)
        met[key] = None if value is None else (value >= bound if op == ">=" else value <= bound)
    return met


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':<28} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'cpu ms/ok':>9} {'loadavg':>8}"
    ]
    rows = [
        ("audited_read", results.get("audited_read")),
        ("audited_read_without_alerts", results.get("audited_read_without_alerts")),
        ("bare_read", results.get("bare_read")),
        ("embedded_audited_read", results.get("embedded_audited_read")),
        *((f"search ({k})", v) for k, v in (results.get("search") or {}).items()),
    ]
    for name, s in rows:
        if s:
            lines.append(
                f"{name:<28} {s['rps']:>8} {s['p50_ms']:>8} {s['p99_ms']:>8} {s['errors']:>7} "
                f"{s['server_cpu_ms_per_ok']:>9} {s['loadavg']:>8}"
            )
    verify, outbox, purge = results.get("verify"), results.get("outbox"), results.get("purge")
    if verify:
        lines.append(
            f"verify --full: {verify['events']} events in {verify['seconds']} s "
            f"({verify['events_per_s']}/s, ok={verify['ok']}, loadavg {verify['loadavg']})"
        )
    if outbox:
        lines.append(
            f"outbox: {outbox['received']} of {outbox['messages']} delivered, "
            f"{outbox['messages_per_s']}/s, {outbox['duplicates']} duplicates "
            f"(loadavg {outbox['loadavg']})"
        )
    if purge:
        lines.append(
            f"purge: {purge.get('note')}"
            if purge.get("skipped")
            else f"purge: {purge['disposed']} disposed in {purge['seconds']} s "
            f"({purge['customers_per_s']}/s)" + (f" — {purge['note']}" if "note" in purge else "")
        )
    lines.append("")
    lines.append(f"{'target':<30} {'value':>12}  {'goal':<12} verdict")
    mark = {True: "ok", False: "MISSED", None: "not measured"}
    for (key, op, bound), verdict in zip(TARGETS, results["targets_met"].values(), strict=True):
        value = _lookup(results, key)
        lines.append(f"{key:<30} {value!s:>12}  {op} {bound:<9g} {mark[verdict]}")
    lines.append(f"machine: {results['machine']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    base_url = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL
    how = Load(args.seconds, args.warmup, args.connections)
    searching = Load(args.seconds, args.warmup, args.search_connections)
    wanted: frozenset[str] = args.only
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shopvault-bench-")))

        def step(what: str) -> None:
            print(f"bench: [{time.monotonic() - began:6.0f} s] {what}", flush=True)

        began = time.monotonic()
        # 1. The embedded default: SQLite, one process.
        if "embedded" in wanted:
            sqlite_dir = scratch / "embedded"
            sqlite_dir.mkdir(mode=0o700)
            sqlite_env = {
                **environment(f"sqlite:///{sqlite_dir / 'shopvault.db'}", sqlite_dir),
                **LOAD_SETTINGS,
            }
            step("SQLite: migrating, seeding the world through the API")
            shop = seed_world(sqlite_env)
            small_shop = bulk.seed_customers(
                sqlite_env,
                bulk.Cohort(
                    0,
                    args.embedded_customers,
                    shop.store_id,
                    shop.sales.id,
                    visit=True,
                    contract=True,
                ),
            )
            bulk.analyze(sqlite_env["SHOPVAULT_DATABASE_URL"])
            step(f"SQLite: {len(small_shop)} customers; embedded audited read")
            results["embedded_audited_read"] = scenarios.embedded_read(
                sqlite_env,
                shop,
                small_shop,
                how=Load(args.seconds, args.warmup, args.embedded_connections),
                scratch=scratch,
            )
        if not wanted - {"embedded"}:
            step("done")
            results["seconds"] = round(time.monotonic() - began, 1)
            return results

        # 2.–7. PostgreSQL.
        url = stack.enter_context(bench_database(base_url))
        env = {**environment(url, scratch / "data"), **LOAD_SETTINGS}
        step("PostgreSQL: migrating, seeding the world through the API")
        world = seed_world(env)
        # The visited customers: the small search's, then up to the audited read's (and the
        # outbox's, one message each); what is grown later has no visit.
        visited = 0
        if wanted & {"search", "audited_read", "verify"}:
            visited = args.search_small
        if "audited_read" in wanted:
            visited = args.read_customers
        if "outbox" in wanted:
            visited = max(visited, args.messages)
        first = min(visited, args.search_small) if "search" in wanted else visited
        seeded = bulk.seed_customers(
            env,
            bulk.Cohort(0, first, world.store_id, world.sales.id, visit=True, contract=True),
            processes=args.processes,
        )
        bulk.analyze(url)
        if "search" in wanted:
            step(f"search at {args.search_small} customers")
            results["search"] = {
                "small": scenarios.search(
                    env,
                    world,
                    seeded,
                    args.search_small,
                    how=searching,
                    workers=args.workers,
                    scratch=scratch,
                )
            }
        if visited > len(seeded):
            seeded += bulk.seed_customers(
                env,
                bulk.Cohort(
                    len(seeded),
                    visited - len(seeded),
                    world.store_id,
                    world.sales.id,
                    visit=True,
                    contract=True,
                ),
                processes=args.processes,
            )
            bulk.analyze(url)
        if "audited_read" in wanted:
            step(f"audited read against the bare app, {len(seeded)} customers")
            results.update(
                scenarios.audited_read(
                    env,
                    world,
                    seeded,
                    how=how,
                    rounds=args.rounds,
                    workers=args.workers,
                    scratch=scratch,
                )
            )
        if "outbox" in wanted:
            step(f"outbox: {args.messages} messages, {args.outbox_workers} workers")
            results["outbox"] = scenarios.outbox(
                env,
                world,
                seeded[: args.messages],
                workers=args.outbox_workers,
                timeout=args.outbox_timeout,
                scratch=scratch,
            )
            results["outbox_messages_per_s"] = results["outbox"]["messages_per_s"]
            results["duplicates"] = results["outbox"]["duplicates"]
        if "search" in wanted:
            step(f"growing the population to {args.search_large} customers")
            population = seeded + bulk.seed_customers(
                env,
                bulk.Cohort(
                    len(seeded),
                    args.search_large - len(seeded),
                    world.store_id,
                    world.sales.id,
                ),
                processes=args.processes,
            )
            bulk.analyze(url)
            step(f"search at {args.search_large} customers")
            results["search"]["large"] = scenarios.search(
                env,
                world,
                population,
                args.search_large,
                how=searching,
                workers=args.workers,
                scratch=scratch,
            )
            small, large = results["search"]["small"], results["search"]["large"]
            results["search_scaling_ratio"] = (
                round(large["p50_ms"] / small["p50_ms"], 3) if small["p50_ms"] else None
            )
        if "verify" in wanted:
            written = bulk.count_events(url)
            step(
                f"sealing {max(0, args.events - written)} events in bulk ({written} written so far)"
            )
            bulk.seed_events(
                env,
                bulk.EventActor(
                    world.sales.login, world.sales.id, world.store_code, "POS-BENCH-01"
                ),
                [c.customer_id for c in seeded],
                args.events - written,
                processes=args.processes,
            )
            bulk.analyze(url)
            step("audit verify --full")
            results["verify"] = scenarios.verify(env, timeout=1800)
            results["verify_events_per_s"] = results["verify"]["events_per_s"]
        if "purge" in wanted:
            step("purge")
            results["purge"] = scenarios.purge(
                env,
                world,
                start_index=args.search_large,
                count=args.purge_customers,
                processes=args.processes,
                timeout=1800,
            )
            results["purge_customers_per_s"] = results["purge"]["customers_per_s"]
        step("done")
        results["seconds"] = round(time.monotonic() - began, 1)
    return results


def _setting(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset):
        return [name for name in SCENARIOS if name in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    results = run(args)
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {k: _setting(v) for k, v in vars(args).items()}
        | {"host": HOST, "app_settings": LOAD_SETTINGS},
        **results,
    }
    results["targets"] = {key: f"{op} {bound:g}" for key, op, bound in TARGETS}
    results["targets_met"] = targets_met(results)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"bench: wrote {args.out}")
    missed = [k for k, v in results["targets_met"].items() if v is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
