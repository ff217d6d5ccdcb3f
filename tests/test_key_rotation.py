"""``shopvault keys rotate``: every data key moves to the newest master key of the ring, the
data is untouched, and an old key leaves only once no row names it.

The online procedure with server processes and a crash half-way is in
``test_key_rotation_online.py``.
"""

from __future__ import annotations

import io
import json
import math
import secrets

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from app import cli
from app.config import Settings
from app.keyring import RingFile, master_key_id, parse_ring
from app.keys import decode_key, encode_key, key_path
from app.main import create_app
from tests import cast
from tests.conftest import SettingsFactory, login
from tests.world import Registered, purpose, register_customer

ROTATION_SETTINGS = ("data_dir", "database_url", "jwt_key", "index_key", "master_key")


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


def _wrapping_ids(db: Engine) -> dict[str, int]:
    """How many data keys (customer and service) each master key wraps."""
    with db.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT master_key_id, count(*) FROM (SELECT master_key_id FROM customer_key "
                "UNION ALL SELECT master_key_id FROM service_key) AS k GROUP BY master_key_id"
            )
        )
        return {key_id: count for key_id, count in rows}


def _retirements(db: Engine) -> dict[str, bool]:
    with db.connect() as connection:
        rows = connection.execute(text("SELECT id, retired_at FROM master_key_retirement"))
        return {key_id: retired_at is not None for key_id, retired_at in rows}


def _key_events(db: Engine) -> list[tuple[str, str]]:
    with db.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT resource, changed_fields FROM access_event "
                "WHERE actor = 'cli' AND action = 'admin' ORDER BY chain, seq"
            )
        )
        return [
            (resource, ",".join(json.loads(changed) if isinstance(changed, str) else changed))
            for resource, changed in rows
        ]


def _use_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings, **overrides: object) -> None:
    """The environment ``shopvault`` reads, made from the test's settings."""
    values = {name: getattr(settings, name) for name in ROTATION_SETTINGS}
    values.update(overrides)
    for name in (*ROTATION_SETTINGS, "other_master_keys"):
        monkeypatch.delenv(f"SHOPVAULT_{name.upper()}", raising=False)
    for name, value in values.items():
        if value is not None:
            text_value = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            monkeypatch.setenv(f"SHOPVAULT_{name.upper()}", text_value)


def _rotate(
    capsys: pytest.CaptureFixture[str], *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    capsys.readouterr()
    if stdin is not None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("sys.stdin", io.StringIO(stdin))
            code = cli.main(["keys", "rotate", *args])
    else:
        code = cli.main(["keys", "rotate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _read(settings: Settings, customers: list[Registered]) -> list[int]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sales = login(client, cast.SALES)
        statuses = []
        for customer in customers:
            response = client.get(
                f"/customers/{customer.id}",
                headers=purpose(sales, "contract", visit=customer.visit_id),
            )
            if response.status_code == 200:
                assert response.json()["name"] == customer.body["name"]
            else:
                assert customer.body["name"] not in response.text
            statuses.append(response.status_code)
        return statuses


def _register(settings: Settings, seeds: range) -> list[Registered]:
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        return [register_customer(client, sales, seed=seed) for seed in seeds]


def _ring(settings: Settings) -> list[str]:
    return list(parse_ring(key_path(settings.data_dir, "master").read_text(), "ring").ids)


def env_key(key: bytes) -> SecretStr:
    return SecretStr(encode_key(key))


def key_of(secret: SecretStr) -> bytes:
    return decode_key(secret.get_secret_value(), "master")


# --- generated keys (DATA_DIR/master.key) -------------------------------------------------------


def test_rotation_with_generated_keys(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(master_key=None)
    customers = _register(settings, range(31, 34))
    [old_id] = _ring(settings)
    old_file = key_path(settings.data_dir, "master").read_text()
    data_before, wrapped_before = _snapshot(db)

    _use_settings(monkeypatch, settings)
    code, out, err = _rotate(capsys, "--batch-size", "2")
    assert code == 0, err
    # Three customers with two scopes each, and the service key for visit notes.
    assert "7 data keys re-wrapped" in out
    [new_id] = _ring(settings)
    assert new_id != old_id
    assert f"retired and removed from {key_path(settings.data_dir, 'master')}: {old_id}" in out

    data_after, wrapped_after = _snapshot(db)
    assert data_after == data_before  # ciphertexts untouched
    assert set(wrapped_after) == set(wrapped_before)
    assert all(wrapped_after[k] != wrapped_before[k] for k in wrapped_before)
    assert _wrapping_ids(db) == {new_id: 7}
    assert _retirements(db) == {old_id: True}
    # The old key is gone from the data directory.
    old_key = parse_ring(old_file, "old").newest
    assert encode_key(old_key) not in key_path(settings.data_dir, "master").read_text()
    # Recorded: superseded, each batch of at most two, retired.
    events = _key_events(db)
    assert events.count((f"keys/master/{old_id}", "superseded_at")) == 1
    assert events.count((f"keys/master/{new_id}", "wrapped_keys")) == math.ceil(7 / 2)
    assert events.count((f"keys/master/{old_id}", "retired_at")) == 1

    # The service with the ring reads every customer as before.
    assert _read(make_settings(master_key=None), customers) == [200, 200, 200]

    # The old key no longer opens anything...
    assert _read(make_settings(master_key=env_key(old_key)), customers[:1]) == [500]
    # ... and the database refuses it for new data keys: a process that still wraps with it
    # (here: configured so, knowing the new key too) gets 503 and leaves nothing behind.
    new_key = parse_ring(key_path(settings.data_dir, "master").read_text(), "new").newest
    stale = make_settings(master_key=env_key(old_key), other_master_keys=env_key(new_key))
    assert _read(stale, customers[:1]) == [200]
    with TestClient(create_app(stale)) as client:
        sales = login(client, cast.SALES)
        with pytest.raises(AssertionError, match="503"):
            register_customer(client, sales, seed=35)
    assert len(_snapshot(db)[0]) == 3


def test_rotation_takes_the_new_key_from_stdin(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(master_key=None)
    customers = _register(settings, range(32, 33))
    new_key = secrets.token_bytes(32)
    _use_settings(monkeypatch, settings)
    code, out, err = _rotate(capsys, "--new-key-stdin", stdin=encode_key(new_key) + "\n")
    assert code == 0, err
    assert encode_key(new_key) not in out + err
    assert _ring(settings) == [master_key_id(new_key)]
    assert _wrapping_ids(db) == {master_key_id(new_key): 3}
    assert _read(make_settings(master_key=env_key(new_key)), customers) == [200]


def test_an_unfinished_rotation_keeps_its_key_and_is_finished_by_running_again(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ring with two keys is a rotation that did not finish: data keys may already be wrapped
    by its newest key, so ``--new-key-stdin`` must not replace it."""
    settings = make_settings(master_key=None)
    customers = _register(settings, range(40, 42))
    staged = secrets.token_bytes(32)
    ring_file = RingFile(settings.data_dir)
    with ring_file.editing() as editor:
        editor.write(editor.read().with_newest(staged))
    customers += _register(settings, range(42, 43))  # wrapped by the staged key
    assert _wrapping_ids(db)[master_key_id(staged)] == 2
    ring_before = ring_file.path.read_text()

    _use_settings(monkeypatch, settings)
    other = encode_key(secrets.token_bytes(32))
    code, _out, err = _rotate(capsys, "--new-key-stdin", stdin=other + "\n")
    assert code == 1
    assert f"a rotation to master key {master_key_id(staged)} is unfinished" in err
    assert ring_file.path.read_text() == ring_before

    code, out, err = _rotate(capsys)
    assert code == 0, err
    assert f"finishing the rotation to master key {master_key_id(staged)}" in out
    assert _ring(settings) == [master_key_id(staged)]
    assert _wrapping_ids(db) == {master_key_id(staged): 7}
    assert _read(make_settings(master_key=None), customers) == [200, 200, 200]


def test_a_second_rotation_at_the_same_time_is_refused(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(master_key=None)
    _register(settings, range(1))
    ring_before = _ring(settings)
    _use_settings(monkeypatch, settings)
    with RingFile(settings.data_dir).editing():
        code, _out, err = _rotate(capsys)
    assert code == 1
    assert "another `shopvault keys rotate` is running" in err
    assert _ring(settings) == ring_before
    assert _retirements(db) == {}


def test_data_keys_under_a_key_outside_the_ring_are_reported_and_left_alone(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    test_keys: dict[str, SecretStr],
) -> None:
    """Wrapped by the environment's key, then rotated with generated keys: nothing can open
    those rows here, so they are named (not touched) and the command says it is not done."""
    _register(make_settings(), range(50, 51))
    foreign_id = master_key_id(key_of(test_keys["master_key"]))
    wrapped_before = _snapshot(db)[1]
    _use_settings(monkeypatch, make_settings(), master_key=None)
    code, _out, err = _rotate(capsys)
    assert code == 1
    assert f"3 data keys are wrapped by master key {foreign_id}, which is not in the ring" in err
    assert _snapshot(db)[1] == wrapped_before
    assert _wrapping_ids(db) == {foreign_id: 3}


def test_the_database_refuses_data_keys_under_a_retired_master_key(
    make_settings: SettingsFactory, db: Engine
) -> None:
    [customer] = _register(make_settings(), range(60, 61))
    with db.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO master_key_retirement (id, superseded_at, retired_at) "
                "VALUES ('0123456789abcdef', :now, :now)"
            ),
            {"now": "2026-12-01 00:00:00"},
        )
    statements = [
        "INSERT INTO service_key (name, wrapped_key, master_key_id, created_at) "
        "VALUES ('other', :blob, '0123456789abcdef', '2026-12-01 00:00:00')",
        "UPDATE customer_key SET master_key_id = '0123456789abcdef', wrapped_key = :blob "
        "WHERE customer_id = :customer",
    ]
    for statement in statements:
        with pytest.raises(IntegrityError, match="retired master key"), db.begin() as connection:
            connection.execute(text(statement), {"blob": b"x" * 61, "customer": customer.id})
    # One row of many is enough for the whole statement to be refused.
    with pytest.raises(IntegrityError, match="retired master key"), db.begin() as connection:
        connection.execute(
            text(
                "UPDATE customer_key SET master_key_id = CASE scope WHEN 'profile' "
                "THEN '0123456789abcdef' ELSE 'fedcba9876543210' END"
            )
        )
    # Another key id is fine: the trigger is about retired keys only.
    with db.begin() as connection:
        connection.execute(
            text(statement.replace("0123456789abcdef", "fedcba9876543210")),
            {"blob": b"x" * 61, "customer": customer.id},
        )


# --- keys in the environment --------------------------------------------------------------------


def test_rotation_with_keys_in_the_environment(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    test_keys: dict[str, SecretStr],
) -> None:
    first = test_keys["master_key"]
    first_id = master_key_id(key_of(first))
    customers = _register(make_settings(), range(70, 72))
    snapshot = _snapshot(db)

    # Nothing to finish: a new key is shown, and nothing is wrapped with it.
    _use_settings(monkeypatch, make_settings())
    code, out, err = _rotate(capsys)
    assert code == 0, err
    shown = out.splitlines()[1]
    second = SecretStr(shown)
    second_id = master_key_id(key_of(second))
    assert f"(id {second_id})" in out
    assert _snapshot(db) == snapshot
    assert _retirements(db) == {}
    code, _out, err = _rotate(capsys, "--new-key-stdin", stdin=shown + "\n")
    assert code == 1
    assert "configured, not read from stdin" in err

    # Step 1: every process knows the new key but still wraps with the old one.
    step1 = make_settings(master_key=first, other_master_keys=second)
    _use_settings(monkeypatch, step1, other_master_keys=second)
    code, out, _err = _rotate(capsys)
    assert code == 0
    assert f"{second_id} in SHOPVAULT_OTHER_MASTER_KEYS wraps none" in out
    assert _snapshot(db) == snapshot
    # Step 2, rolling: processes on the new configuration wrap with the new key; those not
    # restarted yet read what they write, and the other way round.
    step2 = make_settings(master_key=second, other_master_keys=first)
    customers += _register(step2, range(72, 73))
    customers += _register(step1, range(73, 74))
    assert _read(step1, customers) == [200] * 4
    assert _read(step2, customers) == [200] * 4

    # Step 3: with the new configuration, every data key moves to the new key; the old one is
    # retired and may leave the configuration.
    _use_settings(monkeypatch, step2, other_master_keys=first)
    code, out, err = _rotate(capsys)
    assert code == 0, err
    assert "7 data keys re-wrapped" in out  # 3 customers by the old key and the service key
    assert f"retired: {first_id}; remove them from SHOPVAULT_OTHER_MASTER_KEYS" in out
    assert _wrapping_ids(db) == {second_id: 9}
    assert _retirements(db) == {first_id: True}
    assert _read(make_settings(master_key=second), customers) == [200] * 4
