"""One measured load: the load generator (``bench.load``) run against a served app, with the
CPU time that app's processes and the generator spent meanwhile."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from bench.seed import ROOT
from bench.serve import HOST, Target, child_env, session_cpu_seconds


@dataclass
class Measurement:
    ok: int
    ok_in_window: int  # 2xx answers before the deadline: throughput ignores the final drain
    window: float
    errors: int
    elapsed: float
    latencies: array[float] = field(repr=False)
    loadavg: float
    server_cpu: float  # CPU seconds used by the server's processes during the load
    loadgen_cpu: float  # CPU seconds used by the load generator

    @property
    def rate(self) -> float:
        return self.ok_in_window / self.window if self.window else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]

    def summary(self) -> dict[str, float | int]:
        return {
            "rps": round(self.rate, 1),
            "p50_ms": round(self.percentile(0.50) * 1000, 2),
            "p99_ms": round(self.percentile(0.99) * 1000, 2),
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.elapsed, 2),
            "server_cpu_ms_per_ok": round(self.cpu_per_ok * 1000, 3),
            "loadgen_cpu_ms_per_ok": round(self.loadgen_cpu / self.ok * 1000, 3) if self.ok else 0,
            "loadavg_1m": round(self.loadavg, 2),
        }

    @property
    def cpu_per_ok(self) -> float:
        return self.server_cpu / self.ok if self.ok else float("nan")


def pooled(measurements: list[Measurement]) -> Measurement:
    latencies: array[float] = array("d")
    for m in measurements:
        latencies.extend(m.latencies)
    return Measurement(
        ok=sum(m.ok for m in measurements),
        ok_in_window=sum(m.ok_in_window for m in measurements),
        window=sum(m.window for m in measurements),
        errors=sum(m.errors for m in measurements),
        elapsed=sum(m.elapsed for m in measurements),
        latencies=latencies,
        loadavg=max(m.loadavg for m in measurements),
        server_cpu=sum(m.server_cpu for m in measurements),
        loadgen_cpu=sum(m.loadgen_cpu for m in measurements),
    )


def load(target: Target, *, seconds: float, connections: int, scratch: Path) -> Measurement:
    out = scratch / f"latencies-{target.name}.bin"
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "--host",
        HOST,
        "--port",
        str(target.port),
        "--path",
        target.path,
        "--connections",
        str(connections),
        "--seconds",
        str(seconds),
        "--out",
        str(out),
    ]
    for name, value in target.headers.items():
        command += ["--header", f"{name}: {value}"]
    if target.method != "GET":
        command += ["--method", target.method, "--body", target.body]
    if target.targets:
        targets = scratch / f"targets-{target.name}.tsv"
        if not targets.exists():
            targets.write_text("".join("\t".join(t) + "\n" for t in target.targets))
        command += ["--targets", str(targets)]
    cpu_before = session_cpu_seconds(target.session)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command,
        env=child_env({}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    server_cpu = session_cpu_seconds(target.session) - cpu_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generator, now reaped
    loadgen_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    summary = json.loads(done.stdout)
    latencies: array[float] = array("d")
    latencies.frombytes(out.read_bytes())
    ok = sum(n for status, n in summary["statuses"].items() if 200 <= int(status) < 300)
    return Measurement(
        ok=ok,
        ok_in_window=summary["ok_in_window"],
        window=summary["window"],
        errors=summary["errors"],
        elapsed=summary["elapsed"],
        latencies=latencies,
        loadavg=os.getloadavg()[0],
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
    )
