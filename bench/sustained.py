"""``python -m bench.sustained``: the audited read under back-to-back loads, to see it drift.

``make bench`` alternates short rounds between apps, which averages a slow drift away. This runs
loads one after another on the same servers, in the order ``--plan`` gives (``R``: shopvault,
``Q``: shopvault without alert rules, ``B``: the bare app), and prints each: a throughput that
falls load after load while the server's CPU per answer rises is work that grows with time
(session 7 found a foreign key's check that scanned the whole access log once per link).

    .venv/bin/python -m bench.sustained --customers 20000 --plan RRRRQQ

A fresh PostgreSQL database (``SHOPVAULT_BENCH_POSTGRES_URL``), seeded in bulk as ``make bench``
seeds it, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack

from bench import bulk
from bench.bare_app import URL_ENV
from bench.run import DEFAULT_POSTGRES_URL, POSTGRES_ENV
from bench.scenarios import (
    Load,
    bare_target,
    measured,
    read_target,
    read_world,
    scenario,
    start,
)
from bench.serve import Target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sustained", description=__doc__)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--plan", default="RRRRQQBB", help="R, Q or B per load, in order")
    p.add_argument("--seconds", type=float, default=10.0, help="measured load each")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if not args.plan or set(args.plan) - set("RQB"):
        p.error("--plan is a string of R, Q and B")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL
    how = Load(seconds=args.seconds, warmup=args.warmup, connections=args.connections)
    with ExitStack() as stack:
        read = read_world(stack, base, args.customers)
        targets: dict[str, Target] = {}
        for letter in sorted(set(args.plan)):
            target = read_target("real-read", read.world, read.customers)
            if letter == "Q":
                target.name, target.app = "quiet-read", "bench.app_without_alerts:app"
            elif letter == "B":
                target = bare_target("bare-read", read.url, target, read.customers)
            targets[letter] = target
        bulk.analyze(read.url)
        for letter, target in targets.items():
            server_env = {URL_ENV: read.url} if letter == "B" else read.env
            start(stack, read.scratch, target, server_env, args.workers)
        print(f"{'load':>4} {'app':<12} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/ok':>10}")
        for number, letter in enumerate(args.plan, 1):
            target = targets[letter]
            s = scenario(measured(target, how, read.scratch))
            print(
                f"{number:>4} {target.name:<12} {s['rps']:>8} {s['p50_ms']:>8} "
                f"{s['p99_ms']:>8} {s['server_cpu_ms_per_ok']:>10}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
