"""Serving an app under test: ``bench.serve_app`` (as ``shopvault serve`` serves) in a
subprocess of its own session, on a free loopback port, stopped (with all its workers) when the
block ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from bench.seed import ROOT

HOST = "127.0.0.1"
STARTUP_SECONDS = 60.0
STOP_SECONDS = 15.0


@dataclass
class Target:
    """What the load generator sends to a served app: ``{0}``, ``{1}``, … in the path, the
    header values and the body stand for the values of a target drawn at random from
    ``targets`` (see ``bench.load``)."""

    name: str
    app: str
    port: int
    path: str
    headers: dict[str, str]
    method: str = "GET"
    body: str = ""
    targets: list[tuple[str, ...]] | None = None
    session: int = 0  # the session id of its server's processes, once started

    def first(self) -> tuple[str, dict[str, str], str]:
        """The first target's path, headers and body (a request made by hand)."""
        values = self.targets[0] if self.targets else ()

        def fill(text: str) -> str:
            for i, value in enumerate(values):
                text = text.replace(f"{{{i}}}", value)
            return text

        headers = {name: fill(value) for name, value in self.headers.items()}
        return fill(self.path), headers, fill(self.body)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def child_env(extra: dict[str, str]) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **extra, "PYTHONPATH": path}


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited; see its log:\n{log.read_text()}")
        try:
            if httpx.get(f"http://{HOST}:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not start in {STARTUP_SECONDS:.0f}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # uvicorn's supervisor stops its workers
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group this run started for it
        process.wait(STOP_SECONDS)


def session_cpu_seconds(session: int) -> float:
    """CPU time (user + system) of the live processes of a session (Linux ``/proc``; else 0).

    Far less sensitive to a busy machine than requests/s: sharing a core slows a server down
    much more than it adds to the CPU it spends per request."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        # After "pid (comm) ": state ppid pgrp session ... utime(11) stime(12)
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


@contextmanager
def serve(
    app: str, port: int, workers: int, env: dict[str, str], log: IO[bytes], log_path: Path
) -> Iterator[int]:
    command = [
        sys.executable,
        "-m",
        "bench.serve_app",
        app,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    process = subprocess.Popen(
        command, env=child_env(env), cwd=ROOT, stdout=log, stderr=log, start_new_session=True
    )
    try:
        _wait_ready(process, port, log_path)
        yield process.pid  # also its session id (start_new_session)
    finally:
        _stop(process)


def check_answer(target: Target) -> None:
    """One request by hand: the load must measure successful answers, not fast refusals (a
    read answers the record, a search finds its customer)."""
    path, headers, body = target.first()
    url = f"http://{HOST}:{target.port}{path}"
    if target.method == "POST":
        headers = {**headers, "Content-Type": "application/json"}
        response = httpx.post(url, headers=headers, content=body.encode(), timeout=10)
    else:
        response = httpx.get(url, headers=headers, timeout=10)
    answer = response.json() if response.status_code == 200 else {}
    if "id" not in answer and not answer.get("items"):
        raise RuntimeError(f"{target.name}: {response.status_code} {response.text[:300]}")
