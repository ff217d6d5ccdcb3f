"""Concurrent writers never break a chain: several server processes (uvicorn, as deployed) on
PostgreSQL take many concurrent audited requests; afterwards ``shopvault audit verify --full``
finds every chain whole, and the checkpoints the processes wrote agree with the database."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from app.config import Settings
from app.main import create_app
from tests import cast
from tests.audit_helpers import checkpoint_lines, cli_env, verify_cli
from tests.conftest import login
from tests.world import purpose, register_customer

PROCESSES = 3
REQUESTS = 240
CONCURRENCY = 24


@pytest.fixture
def servers(settings: Settings, backend: str) -> Iterator[list[str]]:
    if backend != "postgres":
        pytest.skip("several server processes share a PostgreSQL database")
    sockets, processes = [], []
    env = {**os.environ, **cli_env(settings), "SHOPVAULT_LOG_LEVEL": "WARNING"}
    try:
        for _ in range(PROCESSES):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            sockets.append(listener)
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "app.main:app",
                        "--fd",
                        str(listener.fileno()),
                        "--no-access-log",
                    ],
                    env=env,
                    pass_fds=(listener.fileno(),),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in sockets]
        deadline = time.monotonic() + 60
        for url in urls:
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the servers did not start"
                time.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)  # a graceful shutdown checkpoints the last events
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for listener in sockets:
            listener.close()


async def _storm(urls: list[str], work: list[dict[str, Any]]) -> list[int]:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(n: int, request: dict[str, Any]) -> int:
            async with limit:
                response = await client.request(
                    request["method"], urls[n % len(urls)] + request["url"], **request["extra"]
                )
                return response.status_code

        return await asyncio.gather(*(one(n, r) for n, r in enumerate(work)))


def test_concurrent_processes_keep_every_chain_whole(
    settings: Settings,
    db: Engine,
    servers: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        customers = [register_customer(client, sales, seed=200 + n) for n in range(4)]
    work: list[dict[str, Any]] = []
    for n in range(REQUESTS):
        customer = customers[n % len(customers)]
        kind = n % 3
        if kind == 0:
            work.append(
                {
                    "method": "POST",
                    "url": "/auth/token",
                    "extra": {
                        "data": {
                            "grant_type": "password",
                            "username": cast.TECHNICIAN.login,
                            "password": cast.TECHNICIAN.password if n % 2 else "wrong-password",
                        }
                    },
                }
            )
        else:
            headers = purpose(sales, "contract", visit=customer.visit_id if kind == 1 else None)
            work.append(
                {"method": "GET", "url": f"/customers/{customer.id}", "extra": {"headers": headers}}
            )
    statuses = asyncio.run(_storm(servers, work))
    assert set(statuses) <= {200, 401, 403, 429}, statuses  # 429: the login limit
    assert statuses.count(200) >= REQUESTS // 3

    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code == 0, result
    with db.connect() as connection:
        events = connection.execute(text("SELECT count(*) FROM access_event")).scalar_one()
        chains = connection.execute(text("SELECT count(*) FROM audit_chain")).scalar_one()
    # Every answer has its event, except 429s: a window's refusals are one summary event.
    assert result["checked"] == events >= len([s for s in statuses if s != 429])
    assert chains > PROCESSES  # each process wrote on chains of its own
    # The processes' checkpoints (periodic, and at shutdown) all link into one file.
    lines = checkpoint_lines(settings)
    assert lines and [line["n"] for line in lines] == list(range(1, len(lines) + 1))
