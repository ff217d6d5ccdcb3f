"""``shopvault keys rotate``: a new master key wraps every data key; the data is untouched."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, text

from app import cli
from app.keys import encode_key, key_path
from app.main import create_app
from tests import cast
from tests.conftest import SettingsFactory, login
from tests.world import purpose, register_customer


def _snapshot(db: Engine) -> tuple[dict[str, bytes], dict[tuple[str, str], bytes]]:
    with db.connect() as connection:
        data = {
            row.id: bytes(row.name_enc) + bytes(row.phone_enc)
            for row in connection.execute(text("SELECT id, name_enc, phone_enc FROM customer"))
        }
        wrapped = {
            (row.customer_id, row.scope): bytes(row.wrapped_key)
            for row in connection.execute(
                text("SELECT customer_id, scope, wrapped_key FROM customer_key")
            )
        }
    return data, wrapped


def _environment(monkeypatch: pytest.MonkeyPatch, settings_values: dict[str, object]) -> None:
    for name, value in settings_values.items():
        if value is None:
            monkeypatch.delenv(f"SHOPVAULT_{name.upper()}", raising=False)
            continue
        text_value = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        monkeypatch.setenv(f"SHOPVAULT_{name.upper()}", text_value)


def test_rotation_with_generated_keys(
    make_settings: SettingsFactory,
    database_url: str,
    db: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(master_key=None)
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        customer = register_customer(client, sales, seed=31)
    old_master = key_path(settings.data_dir, "master").read_text()
    data_before, wrapped_before = _snapshot(db)

    _environment(
        monkeypatch,
        {
            "data_dir": settings.data_dir,
            "database_url": database_url,
            "jwt_key": settings.jwt_key,
            "index_key": settings.index_key,
            "master_key": None,
        },
    )
    assert cli.main(["keys", "rotate"]) == 0
    # Two scopes of one customer, and the service key for visit notes.
    assert "3 data keys re-wrapped" in capsys.readouterr().out

    data_after, wrapped_after = _snapshot(db)
    assert data_after == data_before  # ciphertexts untouched
    assert set(wrapped_after) == set(wrapped_before)
    assert all(wrapped_after[k] != wrapped_before[k] for k in wrapped_before)
    new_master = key_path(settings.data_dir, "master").read_text()
    assert new_master != old_master
    assert not key_path(settings.data_dir, "master").with_suffix(".key.next").exists()

    # The service with the new key reads the customer as before.
    with TestClient(create_app(make_settings(master_key=None))) as client:
        sales = login(client, cast.SALES)
        response = client.get(
            f"/customers/{customer.id}",
            headers=purpose(sales, "contract", visit=customer.visit_id),
        )
        assert response.status_code == 200
        assert response.json()["name"] == customer.body["name"]

    # The old master key no longer opens anything.
    with TestClient(
        create_app(make_settings(master_key=SecretStr(old_master.strip()))),
        raise_server_exceptions=False,
    ) as client:
        sales = login(client, cast.SALES)
        response = client.get(
            f"/customers/{customer.id}",
            headers=purpose(sales, "contract", visit=customer.visit_id),
        )
        assert response.status_code == 500
        assert customer.body["name"] not in response.text


def test_rotation_with_a_configured_key_from_stdin(
    make_settings: SettingsFactory,
    database_url: str,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        customer = register_customer(client, sales, seed=32)
    data_before, _ = _snapshot(db)
    new_key = encode_key(bytes(range(32)))
    _environment(
        monkeypatch,
        {
            "data_dir": settings.data_dir,
            "database_url": database_url,
            "jwt_key": settings.jwt_key,
            "index_key": settings.index_key,
            "master_key": settings.master_key,
        },
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(new_key + "\n"))
    assert cli.main(["keys", "rotate", "--new-key-stdin"]) == 0
    assert _snapshot(db)[0] == data_before
    with TestClient(create_app(make_settings(master_key=SecretStr(new_key)))) as client:
        sales = login(client, cast.SALES)
        response = client.get(
            f"/customers/{customer.id}",
            headers=purpose(sales, "contract", visit=customer.visit_id),
        )
        assert response.status_code == 200
        assert response.json()["phone"] == customer.body["phone"]
