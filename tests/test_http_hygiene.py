"""HTTP hygiene: security headers on every response, a Content-Security-Policy the pages work
under (no inline script anywhere), no server banner, CORS closed unless configured, ``405`` with
its own problem type and ``Allow``, limits on the request target and headers, no stack trace,
the uvicorn options ``shopvault serve`` uses, and ``/metrics`` behind its token or the loopback
interface. (``make e2e`` renders the pages in a real browser under the policy.)"""

from __future__ import annotations

import http.client
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.middleware import MAX_HEADER_BYTES, MAX_HEADER_FIELDS, MAX_TARGET_BYTES
from app.security_headers import API_POLICY, PAGE_POLICY
from app.server import uvicorn_options
from tests import cast
from tests.conftest import METRICS_HEADERS, METRICS_TOKEN, SettingsFactory, login
from tests.servers import serving
from tests.world import purpose, register_customer

Headers = dict[str, str]
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
COMMON = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
PAGES = ["/docs", "/redoc", "/docs/oauth2-redirect"]
SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def assert_secured(response: httpx.Response, page: bool = False) -> None:
    for name, value in COMMON.items():
        assert response.headers.get(name) == value, (response.url, name)
    assert "strict-transport-security" in response.headers
    assert response.headers["content-security-policy"] == (PAGE_POLICY if page else API_POLICY)
    assert "server" not in response.headers


def test_the_page_policy_allows_nothing_inline_and_nothing_from_elsewhere() -> None:
    directives = dict(d.strip().split(" ", 1) for d in PAGE_POLICY.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert all("http" not in source and "*" not in source for source in directives.values())
    assert "unsafe-eval" not in PAGE_POLICY
    assert API_POLICY.startswith("default-src 'none'")


@SQLITE
def test_every_kind_of_response_carries_the_security_headers(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=61)
    answers = [
        client.get("/healthz"),
        client.get("/openapi.json"),
        client.get("/auth/me", headers=sales),
        client.get(
            f"/customers/{customer.id}",
            headers=purpose(sales, "contract", visit=customer.visit_id),
        ),
        client.get("/auth/me"),  # 401
        client.get("/no/such/route"),  # 404
        client.delete("/auth/me", headers=sales),  # 405
        client.post("/customers/search", json={"nope": 1}, headers=purpose(sales, "contract")),
        client.post("/auth/token", content=b"x" * (1024 * 1024 + 1)),  # 413
        client.get("/static-offline-docs/favicon.png"),
        client.get("/docs/swagger-init.js"),
        client.get("/metrics", headers=METRICS_HEADERS),
    ]
    for response in answers:
        assert_secured(response)
    for page in PAGES:
        assert_secured(client.get(page), page=True)


@SQLITE
def test_no_page_runs_an_inline_script(client: TestClient) -> None:
    manager = login(client, cast.MANAGER)
    customer = register_customer(client, login(client, cast.SALES), seed=62)
    report = client.get(
        f"/customers/{customer.id}/access-report",
        params={"format": "html"},
        headers=purpose(manager, "subject_request", reason="お客様からの開示請求への対応"),
    )
    register = client.get(
        "/documents", params={"due": "true"}, headers={**manager, "Accept": "text/html"}
    )
    pages = [client.get(page) for page in PAGES] + [report, register]
    for response in pages:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/html")
        assert_secured(response, page=True)
        for attributes, body in SCRIPT.findall(response.text):
            assert "src=" in attributes and not body.strip(), response.url
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", response.text), response.url
        for reference in re.findall(r"""(?:src|href)=["']([^"']+)["']""", response.text):
            assert reference.startswith("/"), (response.url, reference)


@SQLITE
def test_a_method_a_path_does_not_answer_is_405_with_allow(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    document = client.get("/openapi.json").json()
    admin = as_member(cast.ADMIN)
    templates = {
        re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"): {m.upper() for m in item}
        for path, item in document["paths"].items()
    }
    for path in document["paths"]:
        target = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
        # Every documented method of every template that matches (``/customers/search`` is
        # also ``/customers/{customer_id}``).
        answered = set().union(*(m for t, m in templates.items() if t.match(target)))
        for method in sorted({"PUT", "DELETE", "PATCH", "POST", "GET"} - answered):
            response = client.request(method, target, headers=admin)
            assert response.status_code == 405, (method, path, response.status_code)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"] == "/problems/method-not-allowed"
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed - {"HEAD"} == answered, (method, path, allowed)


@SQLITE
def test_request_target_and_headers_are_limited(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    sales = as_member(cast.SALES)
    assert client.get("/auth/me", params={"q": "x" * (MAX_TARGET_BYTES - 100)}).status_code == 401
    too_long = client.get("/auth/me", params={"q": "x" * MAX_TARGET_BYTES}, headers=sales)
    assert too_long.status_code == 414
    assert too_long.json()["type"] == "/problems/uri-too-long"
    assert "xxxxxxxx" not in too_long.text

    big = {**sales, "X-Padding": "p" * (MAX_HEADER_BYTES - 2000)}
    assert client.get("/auth/me", headers=big).status_code == 200
    bigger = {**sales, "X-Padding": "p" * MAX_HEADER_BYTES}
    refused = client.get("/auth/me", headers=bigger)
    assert refused.status_code == 431
    assert refused.json()["type"] == "/problems/headers-too-large"
    many = {**sales, **{f"X-Field-{n}": "v" for n in range(MAX_HEADER_FIELDS)}}
    assert client.get("/auth/me", headers=many).status_code == 431


@SQLITE
def test_an_unexpected_error_shows_no_trace(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings())

    async def explode() -> None:
        raise RuntimeError("trace-marker-5e1d: /srv/secret/path.py line 42")

    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/explode")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/internal"
    for leak in ("trace-marker", "Traceback", "RuntimeError", ".py", "line 42"):
        assert leak not in response.text
    assert_secured(response)


# --- CORS -----------------------------------------------------------------------------------


def _preflight(client: TestClient, origin: str) -> httpx.Response:
    return client.options(
        "/customers/search",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-access-purpose",
        },
    )


@SQLITE
def test_cors_is_closed_unless_configured(
    client: TestClient, as_member: Callable[..., Headers]
) -> None:
    evil = "https://evil.example"
    assert "access-control-allow-origin" not in _preflight(client, evil).headers
    answer = client.get("/auth/me", headers={**as_member(cast.SALES), "Origin": evil})
    assert answer.status_code == 200
    assert not any(name.startswith("access-control-") for name in answer.headers)


@SQLITE
def test_cors_opens_to_the_configured_origins_only(make_settings: SettingsFactory) -> None:
    pos = "https://pos.example.jp"
    settings = make_settings(cors_origins=f"{pos}, https://backoffice.example.jp:8443")
    with TestClient(create_app(settings)) as client:
        allowed = _preflight(client, pos)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == pos
        assert "x-access-purpose" in allowed.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in allowed.headers
        assert allowed.headers["x-request-id"]
        refused = _preflight(client, "https://evil.example")
        assert "access-control-allow-origin" not in refused.headers
        answer = client.get("/auth/me", headers={**login(client, cast.SALES), "Origin": pos})
        assert answer.headers["access-control-allow-origin"] == pos
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("origins", ["*", "https://pos.example.jp/path", "pos.example.jp"])
def test_a_cors_origin_must_be_exact(make_settings: SettingsFactory, origins: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        make_settings(cors_origins=origins)


# --- /metrics -------------------------------------------------------------------------------


@SQLITE
def test_metrics_need_the_token_when_one_is_set(client: TestClient) -> None:
    assert client.get("/metrics", headers=METRICS_HEADERS).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert METRICS_TOKEN not in refused.text
        assert "shopvault_http" not in refused.text


@pytest.fixture
def no_token_client(make_settings: SettingsFactory) -> Callable[..., TestClient]:
    def open_client(peer: str, **overrides: Any) -> TestClient:
        settings = make_settings(metrics_token=None, **overrides)
        return TestClient(create_app(settings), client=(peer, 50000))

    return open_client


@SQLITE
@pytest.mark.parametrize(
    ("peer", "trusted", "status"),
    [
        ("127.0.0.1", "", 200),
        ("::1", "", 200),
        ("10.0.0.5", "", 403),
        ("203.0.113.9", "", 403),
        # A proxy on this host relays others' requests: they are not local.
        ("127.0.0.1", "127.0.0.1", 403),
    ],
)
def test_without_a_token_metrics_answer_the_loopback_interface_only(
    no_token_client: Callable[..., TestClient], peer: str, trusted: str, status: int
) -> None:
    with no_token_client(peer, trusted_proxies=trusted) as client:
        response = client.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["type"] == "/problems/metrics-loopback-only"


# --- the server -----------------------------------------------------------------------------


def test_serve_runs_uvicorn_with_the_hardened_options(monkeypatch: pytest.MonkeyPatch) -> None:
    options = uvicorn_options()
    assert options["server_header"] is False
    assert options["proxy_headers"] is False
    assert 0 < options["timeout_keep_alive"] <= 10
    assert options["timeout_graceful_shutdown"] > 0
    assert options["limit_concurrency"] > 0

    import uvicorn

    from app import cli

    called: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: called.update(kwargs))
    monkeypatch.setattr(cli, "load_keys", lambda settings: None)
    monkeypatch.setattr(sys, "argv", ["shopvault", "serve", "--port", "8123"])
    assert cli.main() == 0
    assert {k: called[k] for k in options} == options


@pytest.fixture
def server(make_settings: SettingsFactory) -> Iterator[str]:
    with serving(create_app(make_settings())) as base_url:
        yield base_url


@SQLITE
def test_over_real_http_there_is_no_server_banner(server: str) -> None:
    response = httpx.get(f"{server}/healthz")
    assert response.status_code == 200
    assert "server" not in response.headers
    assert_secured(response)
    # uvicorn's own answer to a request it cannot parse names no software either.
    parts = urlsplit(server)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    connection.putrequest("GET", "/healthz", skip_host=True)
    connection.putheader("Bad Header", "x")
    connection.endheaders()
    broken = connection.getresponse()
    assert broken.status == 400
    assert broken.getheader("server") is None
    connection.close()
