"""Operations: health and readiness, metrics, offline docs, the OpenAPI error contract, request
ids, the body size limit, JSON logs without personal data, and a real server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app import migrate
from app.logs import configure_logging
from tests import cast
from tests.conftest import METRICS_HEADERS, SettingsFactory
from tests.soak import children

PROBLEM = "application/problem+json"
Headers = Callable[..., dict[str, str]]

# For what does not depend on the database (readiness does, and runs on both).
ON_SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# --- health and readiness -----------------------------------------------------------------------


@ON_SQLITE_ONLY
def test_healthz_answers_without_a_token(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_200_on_a_migrated_database(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.parametrize("revision", ["-1", "base"], ids=["previous-revision", "unmigrated"])
def test_readyz_answers_503_when_the_database_is_not_at_the_latest_revision(
    client: TestClient, database_url: str, revision: str
) -> None:
    assert client.get("/readyz").status_code == 200
    migrate.downgrade(database_url, revision)
    response = client.get("/readyz")
    body = assert_problem(response, 503)
    assert body["type"] == "/problems/unavailable"
    assert int(response.headers["retry-after"]) > 0


# --- metrics ------------------------------------------------------------------------------------


@ON_SQLITE_ONLY
def test_metrics_count_requests_by_route_template_never_by_raw_path(
    client: TestClient, as_member: Headers
) -> None:
    raw_slug = "raw-slug-5f0c2a9e"
    raw_path = "/no-such-route/3b7e2f44-0d9c-4a55-9b1e-2f6f3d9c1a77"
    assert client.get("/auth/me", headers=as_member(cast.SALES)).status_code == 200
    assert client.get(f"/problems/{raw_slug}").status_code == 404
    assert client.get(raw_path).status_code == 404

    response = client.get("/metrics", headers=METRICS_HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    series = [line for line in response.text.splitlines() if line.startswith("shopvault_http_")]
    assert 'shopvault_http_requests_total{method="GET",route="/auth/me",status="200"} 1.0' in series
    assert any('route="/problems/{slug}",status="404"' in line for line in series)
    assert any('route="unmatched",status="404"' in line for line in series)
    assert any(line.startswith("shopvault_http_request_duration_seconds_bucket") for line in series)
    assert raw_slug not in response.text
    assert "3b7e2f44" not in response.text


# --- offline docs -------------------------------------------------------------------------------

ASSET_REFERENCE = re.compile(
    r"""(?:src|href|spec-url|data-openapi-url)=["']([^"']+)["']|url:\s*'([^']+)'"""
)


@ON_SQLITE_ONLY
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_assets_the_service_serves_itself(
    client: TestClient, page: str
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html
    assert "https://" not in html
    assets = {a or b for a, b in ASSET_REFERENCE.findall(html)}
    assert "/openapi.json" in assets
    assert any(asset.endswith(".js") for asset in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        assert fetched.content


@ON_SQLITE_ONLY
def test_swagger_oauth2_redirect_page_is_served(client: TestClient) -> None:
    assert client.get("/docs/oauth2-redirect").status_code == 200


# --- the OpenAPI error contract -----------------------------------------------------------------


@ON_SQLITE_ONLY
def test_openapi_declares_every_error_of_every_operation_as_problem_json(
    client: TestClient,
) -> None:
    document = client.get("/openapi.json").json()
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert operations
    for method, path, operation in operations:
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        assert "422" in responses, where
        errors = {status: r for status, r in responses.items() if int(status) >= 400}
        assert errors, where
        for status, response in errors.items():
            assert set(response.get("content", {})) == {PROBLEM}, f"{where} {status}"
            schema = response["content"][PROBLEM]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, f"{where} {status}"
        if "requestBody" in operation:
            assert "413" in responses, where
    schemas = document["components"]["schemas"]
    assert "Problem" in schemas
    assert "HTTPValidationError" not in schemas
    assert "application/json" not in json.dumps(
        [r for _, _, op in operations for s, r in op["responses"].items() if int(s) >= 400]
    )


# --- request ids --------------------------------------------------------------------------------


@ON_SQLITE_ONLY
def test_every_response_carries_a_request_id(client: TestClient, as_member: Headers) -> None:
    headers = as_member(cast.SALES)
    responses = [
        client.get("/healthz"),
        client.get("/auth/me"),
        client.get("/auth/me", headers=headers),
        client.get("/no-such-route"),
        client.post("/auth/password", json={"current": 1}, headers=headers),
        client.post(
            "/auth/password",
            content=b"{}",
            headers={**headers, "content-type": "application/json", "content-length": "99999999"},
        ),
        client.get("/static-offline-docs/favicon.png"),
        client.get("/metrics", headers=METRICS_HEADERS),
    ]
    assert [r.status_code for r in responses] == [200, 401, 200, 404, 422, 413, 200, 200]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), ids
    assert len(set(ids)) == len(ids)


@ON_SQLITE_ONLY
def test_a_well_formed_incoming_request_id_is_kept_and_a_malformed_one_replaced(
    client: TestClient,
) -> None:
    kept = client.get("/healthz", headers={"X-Request-Id": "pos-01.req_000123"})
    assert kept.headers["x-request-id"] == "pos-01.req_000123"
    replaced = client.get("/healthz", headers={"X-Request-Id": "090-1234-5678 <script>"})
    assert replaced.headers["x-request-id"] != "090-1234-5678 <script>"
    assert re.fullmatch(r"[0-9a-f-]{36}", replaced.headers["x-request-id"])


# --- body size ----------------------------------------------------------------------------------

OVERSIZED = b'{"current": "' + b"x" * (1024 * 1024 + 100 * 1024) + b'", "new": "y"}'


@ON_SQLITE_ONLY
def test_a_body_over_1_mib_is_refused_with_413(client: TestClient, as_member: Headers) -> None:
    headers = {**as_member(cast.SALES), "content-type": "application/json"}
    response = client.post("/auth/password", content=OVERSIZED, headers=headers)
    body = assert_problem(response, 413)
    assert body["type"] == "/problems/payload-too-large"


@ON_SQLITE_ONLY
def test_a_chunked_body_over_1_mib_is_refused_with_413(
    client: TestClient, as_member: Headers
) -> None:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(OVERSIZED), 64 * 1024):
            yield OVERSIZED[start : start + 64 * 1024]

    headers = {**as_member(cast.SALES), "content-type": "application/json"}
    request = client.build_request("POST", "/auth/password", content=chunks(), headers=headers)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = client.send(request)
    body = assert_problem(response, 413)
    assert body["type"] == "/problems/payload-too-large"


@ON_SQLITE_ONLY
def test_a_body_of_exactly_1_mib_is_not_refused_for_its_size(
    client: TestClient, as_member: Headers
) -> None:
    padding = 1024 * 1024 - len(b'{"current": "", "new": "a-new-long-password"}')
    body = b'{"current": "' + b"x" * padding + b'", "new": "a-new-long-password"}'
    assert len(body) == 1024 * 1024
    headers = {**as_member(cast.SALES), "content-type": "application/json"}
    response = client.post("/auth/password", content=body, headers=headers)
    assert response.status_code == 422  # parsed and validated (too long), not refused unread


# --- logs ---------------------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[Callable[[], list[str]]]:
    """The process's JSON logging, as ``configure_logging`` sets it up, written into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    saved_access = access.disabled
    configure_logging("INFO")
    buffer = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)

    yield lambda: buffer.getvalue().splitlines()
    root.handlers[:], root.level = saved
    access.disabled = saved_access


PHONE = "090-8765-4321"


@ON_SQLITE_ONLY
def test_logs_are_json_lines_with_request_ids_and_no_personal_data(
    client: TestClient, as_member: Headers, json_logs: Callable[[], list[str]]
) -> None:
    failed_login = client.post(
        "/auth/token",
        data={"grant_type": "password", "username": PHONE, "password": "09087654321"},
    )
    assert failed_login.status_code == 401
    invalid = client.post(
        "/auth/password",
        json={"current": 12, "new": PHONE, "phone": PHONE},
        headers=as_member(cast.SALES),
    )
    assert invalid.status_code == 422
    assert PHONE not in invalid.text
    client.get(f"/problems/{PHONE}")

    # Every line is one JSON object. (The test's own HTTP client logs through httpx; skip it.)
    records = [json.loads(line) for line in json_logs()]
    lines = [json.dumps(r, ensure_ascii=False) for r in records if r["logger"] != "httpx"]
    assert lines
    for line in lines:
        assert PHONE not in line, line
        assert "09087654321" not in line
    request_lines = [r for r in records if r["msg"] == "request"]
    assert {r["request_id"] for r in request_lines} >= {
        failed_login.headers["x-request-id"],
        invalid.headers["x-request-id"],
    }
    assert {r["route"] for r in request_lines} >= {"/auth/token", "/auth/password"}


# --- a real server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_up(base: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the server did not come up")


@contextmanager
def shopvault_serving(
    sqlite_template: Path, tmp_path: Path, workers: int
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """``shopvault serve`` on a free port with no keys configured (it generates them before the
    workers start, so that they agree); its base URL, process and log; stopped at the end."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(sqlite_template, data_dir / "shopvault.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPVAULT_")}
    env["SHOPVAULT_DATA_DIR"] = str(data_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    command = [str(Path(sys.executable).parent / "shopvault"), "serve", "--port", str(port)]
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [*command, "--workers", str(workers)],
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_up(base, server)
            yield base, server, log_path
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def test_shopvault_serve_answers_over_real_http_with_two_workers(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """No keys configured: ``serve`` generates them before the workers start, so both agree."""
    with shopvault_serving(sqlite_template, tmp_path, workers=2) as (base, _server, log_path):
        docs = httpx.get(f"{base}/docs", timeout=10)
        assert docs.status_code == 200
        assert "https://" not in docs.text
        for asset in ("/static-offline-docs/swagger-ui-bundle.js", "/openapi.json"):
            assert httpx.get(f"{base}{asset}", timeout=10).status_code == 200

        token = httpx.post(
            f"{base}/auth/token",
            data={
                "grant_type": "password",
                "username": cast.SALES.login,
                "password": cast.SALES.password,
            },
            timeout=10,
        ).json()["access_token"]
        # Fresh connections, spread over the workers: each accepts the other's token.
        for _ in range(6):
            me = httpx.get(
                f"{base}/auth/me",
                headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                timeout=10,
            )
            assert me.status_code == 200, me.text
            assert me.headers["x-request-id"]

    output = log_path.read_text().splitlines()
    records = [json.loads(line) for line in output]
    warnings = [r for r in records if r["msg"].startswith("generated a development key")]
    assert sorted(r["key"] for r in warnings) == ["index", "jwt", "master"]
    assert any(r["msg"] == "request" and r["route"] == "/auth/me" for r in records)


def _workers(server: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    return [
        child
        for child in children(server)
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def _established(pid: int, port: int) -> int:
    """How many established TCP connections to ``port`` the process holds (``/proc``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_shopvault_serve_spreads_a_burst_of_connections_over_its_workers(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """Connections opened all at once (a back office opening its pool) go to every worker, not
    most of them to whichever woke first (uvicorn's shared socket: 29 and 3, 2 and 30, 32 and 0
    of 32). Five bursts; with a socket per worker, one as lopsided as 5 of 32 comes once in
    tens of thousands."""
    with shopvault_serving(sqlite_template, tmp_path, workers=2) as (base, server, _log):
        port = int(base.rsplit(":", 1)[1])

        async def burst() -> list[int]:
            opened = await asyncio.gather(
                *(asyncio.open_connection("127.0.0.1", port) for _ in range(32))
            )
            for _reader, writer in opened:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            for reader, _writer in opened:
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            held = [_established(worker, port) for worker in _workers(server.pid)]
            for _reader, writer in opened:
                writer.close()
                await writer.wait_closed()
            return held

        bursts = [asyncio.run(burst()) for _ in range(5)]
    assert all(len(held) == 2 and sum(held) == 32 for held in bursts), bursts
    assert all(min(held) >= 6 for held in bursts), bursts


@ON_SQLITE_ONLY
def test_what_start_up_built_is_frozen_while_serving_and_released_at_shutdown(
    make_settings: SettingsFactory,
) -> None:
    """Out of the garbage collector's full passes while the app serves; given back when it stops,
    so that an app's objects never outlive it (tests build many)."""
    import gc

    from app.main import create_app

    with TestClient(create_app(make_settings())) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
