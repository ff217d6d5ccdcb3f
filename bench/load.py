"""The load generator: ``python -m bench.load --port N --path /x --seconds S --connections C``.

With ``--targets FILE`` (one line per target, its values separated by tabs), ``{0}``, ``{1}``, …
in ``--path``, the ``--header`` values and ``--body`` are replaced by the values of a target
drawn at random for each request (random customers out of many); ``--method POST --body JSON``
sends a JSON body.

A process of its own (it shares no GIL with the servers), asyncio over raw keep-alive HTTP/1.1
connections: write the request bytes, read the head up to the blank line, read
``Content-Length`` bytes. Far cheaper per request than an HTTP client library, so that the
machine's cores go to the servers under test.

Each connection sends its next request as soon as the previous answer is read, until the
deadline; a request still unanswered ``GRACE_SECONDS`` after it is cancelled and counted as an
error, so a run always ends by itself. Only loopback addresses are accepted.

Prints one JSON object (counts, 2xx answers within the window, elapsed seconds, statuses) on
stdout and writes every completed request's latency in seconds (native doubles) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import re
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

GRACE_SECONDS = 10.0
CONNECT_RETRY_SECONDS = 0.05


@dataclass
class Tally:
    latencies: array[float] = field(default_factory=lambda: array("d"))
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    ok_in_window: int = 0  # 2xx answers that arrived before the deadline

    @property
    def errors(self) -> int:
        bad_status = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return bad_status + sum(self.failures.values())


def build_request(
    host: str, port: int, path: str, headers: list[str], method: str = "GET", body: str = ""
) -> bytes:
    payload = body.encode()
    if payload:
        headers = [*headers, "Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1") + payload


_PLACE = re.compile(r"\{(\d+)\}")


class Requests:
    """The request bytes to send next: always the same, or built for a random target."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        headers: list[str],
        *,
        method: str = "GET",
        body: str = "",
        targets: list[list[str]] | None = None,
        seed: int | None = None,
    ) -> None:
        self._parts = (host, port, path, headers, method, body)
        self._targets = targets
        self._rng = random.Random(seed)
        self._fixed = None if targets else build_request(host, port, path, headers, method, body)

    def next(self) -> bytes:
        if self._fixed is not None:
            return self._fixed
        assert self._targets
        values = self._rng.choice(self._targets)

        def fill(text: str) -> str:
            return _PLACE.sub(lambda m: values[int(m.group(1))], text)

        host, port, path, headers, method, body = self._parts
        return build_request(host, port, fill(path), [fill(h) for h in headers], method, fill(body))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; returns its status and whether the connection stays open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    keep_alive = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            raise ValueError("chunked responses are not expected")
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    if length:
        await reader.readexactly(length)
    return status, keep_alive


async def connection_loop(
    host: str, port: int, requests: Requests, deadline: float, tally: Tally
) -> None:
    writer: asyncio.StreamWriter | None = None
    try:
        while time.monotonic() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    tally.failures["connect"] += 1
                    await asyncio.sleep(CONNECT_RETRY_SECONDS)
                    continue
            request = requests.next()
            started = time.perf_counter()
            try:
                writer.write(request)
                status, keep_alive = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                tally.failures["broken"] += 1
                writer.close()
                writer = None
                continue
            tally.latencies.append(time.perf_counter() - started)
            tally.statuses[status] += 1
            if 200 <= status < 300 and time.monotonic() <= deadline:
                tally.ok_in_window += 1
            if not keep_alive:
                writer.close()
                writer = None
    except asyncio.CancelledError:
        tally.failures["unanswered"] += 1
        raise
    finally:
        if writer is not None:
            writer.close()


async def run_load(
    host: str, port: int, requests: Requests, *, connections: int, seconds: float
) -> tuple[Tally, float]:
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds
    tasks = [
        asyncio.create_task(connection_loop(host, port, requests, deadline, tally))
        for _ in range(connections)
    ]
    _done, pending = await asyncio.wait(tasks, timeout=seconds + GRACE_SECONDS)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return tally, time.monotonic() - started


def _loopback(host: str) -> str:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise argparse.ArgumentTypeError("only loopback addresses may be loaded")
    return host


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--method", default="GET", choices=["GET", "POST"])
    parser.add_argument("--body", default="", help="a JSON body (with --method POST)")
    parser.add_argument("--targets", help="file: one target per line, its values tab-separated")
    parser.add_argument("--seed", type=int, default=None, help="for the choice of targets")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", required=True, help="file for the latencies (doubles)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets = None
    if args.targets:
        with open(args.targets, encoding="utf-8") as handle:
            targets = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    requests = Requests(
        args.host,
        args.port,
        args.path,
        args.header,
        method=args.method,
        body=args.body,
        targets=targets,
        seed=args.seed,
    )
    coroutine = run_load(
        args.host, args.port, requests, connections=args.connections, seconds=args.seconds
    )
    try:
        import uvloop
    except ImportError:
        tally, elapsed = asyncio.run(coroutine)
    else:
        tally, elapsed = uvloop.run(coroutine)
    with open(args.out, "wb") as handle:
        tally.latencies.tofile(handle)
    summary = {
        "completed": len(tally.latencies),
        "ok_in_window": tally.ok_in_window,
        "window": args.seconds,
        "errors": tally.errors,
        "elapsed": elapsed,
        "statuses": {str(status): n for status, n in sorted(tally.statuses.items())},
        "failures": dict(tally.failures),
    }
    json.dump(summary, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
