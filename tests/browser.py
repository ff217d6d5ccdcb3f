"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol: open a page,
wait for it to render, read what the page logged and every request it made, take a
screenshot. Enough for ``make e2e``; no browser-automation framework needed."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,2000",
)
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageRun:
    """What one page did while it loaded."""

    requests: list[str] = field(default_factory=list)
    # Requests the browser refused to send (the Content-Security-Policy, above all).
    blocked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # console errors, exceptions, CSP reports
    _ids: dict[str, str] = field(default_factory=dict)

    @property
    def sent(self) -> list[str]:
        return [url for url in self.requests if url not in self.blocked]


class Browser:
    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._session: str | None = None
        self.run = PageRun()

    def _send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if self._session is not None:
            message["sessionId"] = self._session
        self._socket.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._observe(reply)

    def _observe(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            self.run.requests.append(params["request"]["url"])
            self.run._ids[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed" and params.get("blockedReason"):
            self.run.blocked.append(self.run._ids.get(params["requestId"], "?"))
        elif method == "Log.entryAdded" and params["entry"]["level"] in {"error", "warning"}:
            self.run.problems.append(f"log: {params['entry'].get('text', '')}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.run.problems.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in {"error", "warning"}:
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.run.problems.append(f"console.{params['type']}: {args}")

    def _pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._observe(json.loads(self._socket.recv(timeout=left)))
            except TimeoutError:
                return

    def open_tab(self) -> None:
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self._send(f"{domain}.enable")

    def visit(self, url: str, headers: dict[str, str] | None = None) -> PageRun:
        self.run = PageRun()
        self._send("Network.setExtraHTTPHeaders", {"headers": headers or {}})
        self._send("Page.navigate", {"url": url})
        return self.run

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """The value of ``expression`` once it is truthy (``AssertionError`` after timeout)."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            result = self._send(
                "Runtime.evaluate", {"expression": expression, "returnByValue": True}
            )["result"]
            value = result.get("value")
            if value:
                self._pump(0.5)  # what the page still logs or fetches after it settled
                return value
            self._pump(0.2)
        raise AssertionError(f"{expression!r} never held (last value {value!r})")

    def evaluate(self, expression: str) -> Any:
        result = self._send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        shot = self._send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium is not installed (Debian: apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="shopvault-chromium-")
    process = subprocess.Popen(
        [executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        endpoint = None
        for line in process.stderr:
            match = _LISTENING.search(line)
            if match:
                endpoint = match[1]
                break
        if endpoint is None:
            raise RuntimeError("chromium did not open its DevTools endpoint")
        # Keep reading what it writes, or a full pipe would stall it.
        threading.Thread(target=process.stderr.read, daemon=True).start()
        with connect(endpoint, max_size=64 * 1024 * 1024, open_timeout=30) as socket:
            browser = Browser(socket)
            browser.open_tab()
            yield browser
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
