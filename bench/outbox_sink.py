"""A local SMTP sink (aiosmtpd on loopback) that counts what the outbox workers deliver: each
``Message-ID`` and when it arrived, so that throughput and duplicates are read at the receiving
end."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from typing import Any

from aiosmtpd.smtp import SMTP

from bench.serve import HOST

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


class Tally:
    def __init__(self) -> None:
        self.ids: Counter[bytes] = Counter()
        self.first: float | None = None
        self.last: float | None = None
        self._lock = threading.Lock()

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        head = content.split(b"\r\n\r\n", 1)[0]
        found = _MESSAGE_ID.search(head)
        now = time.monotonic()
        with self._lock:
            self.ids[found.group(1) if found else b"<none>"] += 1
            self.first = now if self.first is None else self.first
            self.last = now
        return "250 OK"

    @property
    def received(self) -> int:
        return sum(self.ids.values())

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.ids.values() if n > 1)


class Sink:
    """``with Sink() as sink:`` serves SMTP on 127.0.0.1:``sink.port`` (ephemeral), in a thread
    with its own event loop, until the block ends."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def _protocol(self) -> SMTP:
        return SMTP(self.tally, hostname="localhost", loop=self._loop)

    async def _start(self) -> asyncio.Server:
        return await self._loop.create_server(self._protocol, HOST, 0)

    def __enter__(self) -> Sink:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_: object) -> None:
        server = self._server

        async def stop() -> None:
            if server is not None:
                server.close()
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
