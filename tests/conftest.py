"""Fixtures: a real, migrated database per test (SQLite, and PostgreSQL when configured), the app
built by its factory, and an HTTP client that goes through the whole ASGI stack."""

from __future__ import annotations

import os
import secrets
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine

from app.config import Settings
from app.db import create_sync_engine
from app.keys import encode_key
from app.main import create_app
from tests import cast, databases

warnings.filterwarnings("ignore", message=".*httpx2.*")
from fastapi.testclient import TestClient  # noqa: E402

BACKENDS = ["sqlite", "postgres"]
# Every test app asks this of /metrics (``METRICS_HEADERS``): the TestClient's peer is not an
# address, let alone a loopback one.
METRICS_TOKEN = "metrics-token-for-the-tests"
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}
REDIS_ENV = "SHOPVAULT_TEST_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def pytest_report_header() -> str:
    if databases.postgres_base_url():
        return "PostgreSQL tests: on"
    return f"PostgreSQL tests: SKIPPED ({databases.POSTGRES_ENV} is not set)"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return databases.build_sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    base = databases.postgres_base_url()
    if base is None:
        pytest.skip(f"PostgreSQL tests need {databases.POSTGRES_ENV}")
    with databases.postgres_template(base) as name:
        yield name


@pytest.fixture(scope="session")
def postgres_copies(postgres_template: str) -> Iterator[databases.PostgresCopies]:
    base = databases.postgres_base_url()
    assert base is not None
    copies = databases.PostgresCopies(base, postgres_template)
    yield copies
    copies.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgres" and databases.postgres_base_url() is None:
        pytest.skip(f"PostgreSQL tests need {databases.POSTGRES_ENV}")
    return name


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        yield databases.sqlite_copy(template, tmp_path / "db")
        return
    copies: databases.PostgresCopies = request.getfixturevalue("postgres_copies")
    with copies.copy() as url:
        yield url


@pytest.fixture(scope="session")
def test_keys() -> dict[str, SecretStr]:
    return {
        f"{name}_key": SecretStr(encode_key(secrets.token_bytes(32)))
        for name in ("jwt", "master", "index")
    }


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(
    database_url: str, tmp_path: Path, test_keys: dict[str, SecretStr]
) -> SettingsFactory:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "metrics_token": METRICS_TOKEN,
            **test_keys,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
def redis_settings() -> Iterator[dict[str, str]]:
    """Settings for a shared Redis (``SHOPVAULT_TEST_REDIS_URL``, else the local one), under a
    key prefix of this test's own; its keys are deleted afterwards. Skipped when no Redis
    answers, unless the variable is set (then the test fails)."""
    url = os.environ.get(REDIS_ENV) or DEFAULT_REDIS_URL
    connection = redis.Redis.from_url(url)
    try:
        connection.ping()
    except redis.ConnectionError:
        if os.environ.get(REDIS_ENV):
            raise
        pytest.skip(f"no Redis at {url} (set {REDIS_ENV})")
    prefix = f"sv-test-{uuid.uuid4().hex[:12]}"
    yield {"redis_url": url, "redis_key_prefix": prefix}
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)
    connection.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    """A plain connection to the test's database, for looking at what was committed."""
    engine = create_sync_engine(database_url)
    yield engine
    engine.dispose()


def login(
    client: httpx.Client, member: cast.Member, *, terminal: str | None = None
) -> dict[str, str]:
    headers = {"X-Terminal-Id": terminal} if terminal else {}
    response = client.post(
        "/auth/token",
        data={"grant_type": "password", "username": member.login, "password": member.password},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def login_client(client: TestClient, system: cast.Client) -> dict[str, str]:
    response = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": system.name,
            "client_secret": system.secret,
        },
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.fixture
def as_member(client: TestClient) -> Callable[..., dict[str, str]]:
    """Bearer headers for a cast member (logged in through /auth/token), cached per test."""
    cache: dict[tuple[str, str | None], dict[str, str]] = {}

    def headers(member: cast.Member, terminal: str | None = None) -> dict[str, str]:
        key = (member.login, terminal)
        if key not in cache:
            cache[key] = login(client, member, terminal=terminal)
        return dict(cache[key])

    return headers
