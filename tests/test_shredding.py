"""Shred keys (``app/shred_keys.py``, ``app/shredding.py``): the part of every customer data key
kept outside the database, so that an erasure reaches copies of the database too.

The backup itself is in ``test_rights.py`` (a copy taken before an erasure no longer decrypts
with the live keys). Here: the key file, erasures and registrations racing in one bucket, an
erasure whose process stops before the old key is destroyed, and keys from before shred keys.
"""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from app import shred_keys
from app.crypto import KeyScope, MasterKey, new_data_key, xor
from app.keyfiles import KeyError_
from app.keyring import master_ring_source
from app.main import create_app
from app.models import CustomerKey, ShredBucket
from app.retention import purge as purge_module
from app.shred_keys import (
    BUCKETS,
    FIRST_VERSION,
    ShredKeyMissing,
    ShredKeys,
    bucket_of,
    split_stored,
)
from app.vault import Vault
from tests import cast
from tests.audit_helpers import run_cli
from tests.conftest import SettingsFactory, login
from tests.servers import serving
from tests.test_key_rotation import _rotate as rotate
from tests.test_key_rotation import _use_settings as use_settings
from tests.world import Registered, purpose, register_customer

REASON = "お客様からの削除請求への対応のため"


def _read(client: httpx.Client | TestClient, sales: dict[str, str], customer: Registered) -> int:
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(sales, "contract", visit=customer.visit_id)
    )
    if response.status_code == 200:
        assert response.json()["name"] == customer.body["name"]
    return response.status_code


def _erase(client: httpx.Client | TestClient, manager: dict[str, str], customer_id: str) -> int:
    return client.delete(
        f"/customers/{customer_id}", headers=purpose(manager, "subject_request", reason=REASON)
    ).status_code


def _bucket_version(db: Engine, bucket: int) -> int:
    with Session(db) as session:
        return session.execute(
            select(ShredBucket.version).where(ShredBucket.bucket == bucket)
        ).scalar_one()


def _stored_versions(db: Engine) -> set[int | None]:
    with Session(db) as session:
        rows = session.execute(select(CustomerKey.wrapped_key)).scalars()
        return {split_stored(stored)[1] for stored in rows}


# --- the file -----------------------------------------------------------------------------------


def test_the_shred_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "shred.keys"
    writer = ShredKeys(path).prepare()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    versions = writer.versions()
    assert len(versions) == BUCKETS and set(map(tuple, versions.values())) == {(FIRST_VERSION,)}
    assert ShredKeys(path).prepare().versions() == versions  # a second start keeps the keys

    data_key = new_data_key()
    masked = writer.mask(data_key, "c-1", KeyScope.PROFILE, FIRST_VERSION)
    assert masked != data_key
    assert writer.mask(masked, "c-1", KeyScope.PROFILE, FIRST_VERSION) == data_key
    # The pad is the customer's and the scope's own.
    assert writer.mask(data_key, "c-1", KeyScope.IDENTITY, FIRST_VERSION) != masked
    assert writer.mask(data_key, "c-2", KeyScope.PROFILE, FIRST_VERSION) != masked

    # A damaged file is refused, not half-read.
    damaged = tmp_path / "damaged.keys"
    damaged.write_text("0 1 c2hvcnQ\n")
    with pytest.raises(KeyError_):
        ShredKeys(damaged).prepare()

    # Told apart by length: a bare wrap from before shred keys may end in anything.
    bare = MasterKey(new_data_key()).wrap(data_key, customer_id="c-1", scope=KeyScope.PROFILE)
    assert split_stored(bare) == (bare, None)
    assert split_stored(bare[:-5] + b"S" + bare[-4:]) == (bare[:-5] + b"S" + bare[-4:], None)

    reader = ShredKeys(path).prepare()
    bucket = bucket_of("c-1")
    writer.ensure({bucket: FIRST_VERSION + 1})
    moved = reader.mask(data_key, "c-1", KeyScope.PROFILE, FIRST_VERSION + 1)  # read again
    assert moved != masked
    # Re-masking (a purge's): from one version to the next, or from no mask at all.
    repad = writer.repad("c-1", KeyScope.PROFILE, bucket, FIRST_VERSION, FIRST_VERSION + 1)
    assert xor(masked, repad) == moved
    assert xor(
        data_key, writer.repad("c-1", KeyScope.PROFILE, bucket, None, FIRST_VERSION + 1)
    ) == (moved)
    assert writer.destroy_below({bucket: FIRST_VERSION + 1}) == 1
    with pytest.raises(ShredKeyMissing):  # the writer had used that version: nothing of it stays
        writer.mask(masked, "c-1", KeyScope.PROFILE, FIRST_VERSION)
    assert all(version > FIRST_VERSION for b, version in writer._macs if b == bucket)
    assert reader.versions()[bucket] == [FIRST_VERSION + 1]
    with pytest.raises(ShredKeyMissing):
        reader.mask(masked, "c-1", KeyScope.PROFILE, FIRST_VERSION)
    # Only the given buckets, and never their current version.
    assert writer.destroy_below({bucket: FIRST_VERSION + 1, (bucket + 1) % BUCKETS: 1}) == 0


# --- erasure and registration in one bucket -----------------------------------------------------


def test_registrations_and_erasures_racing_in_one_bucket_lose_no_one(
    make_settings: SettingsFactory, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every customer in one bucket: each erasure moves everyone else's keys to the next version
    while other requests register customers under the version they read. Afterwards every
    customer still held reads, and the file holds the current version only."""
    monkeypatch.setattr(shred_keys, "BUCKETS", 1)
    settings = make_settings()
    with serving(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client:
        sales, manager = login(client, cast.SALES), login(client, cast.MANAGER)
        doomed = [register_customer(client, sales, seed=500 + n) for n in range(5)]
        registered: list[Registered] = []
        failures: list[BaseException] = []

        def register(first: int) -> None:
            try:
                with httpx.Client(base_url=base, timeout=60) as own:
                    for n in range(first, first + 4):
                        registered.append(register_customer(own, sales, seed=n))
            except BaseException as exc:  # reported below
                failures.append(exc)

        def erase() -> None:
            try:
                with httpx.Client(base_url=base, timeout=60) as own:
                    for customer in doomed:
                        assert _erase(own, manager, customer.id) == 200
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=register, args=(600 + 10 * n,)) for n in range(3)]
        threads.append(threading.Thread(target=erase))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        assert len(registered) == 12
        assert [_read(client, sales, customer) for customer in registered] == [200] * 12
        assert {_erase(client, manager, customer.id) for customer in doomed} == {404}

    current = _bucket_version(db, 0)
    assert current == FIRST_VERSION + len(doomed)
    assert _stored_versions(db) == {current}
    assert ShredKeys(settings.resolved_shred_keys_file).versions()[0] == [current]


def test_an_erasure_that_stops_before_destroying_the_old_key_is_finished_by_purge(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    path = settings.resolved_shred_keys_file
    with TestClient(create_app(settings)) as client:
        customer = register_customer(client, login(client, cast.SALES), seed=520)
        bucket = bucket_of(customer.id)
        with monkeypatch.context() as patch:

            def fail(_self: ShredKeys, _versions: object) -> int:
                raise OSError("the disk is full")

            patch.setattr(ShredKeys, "destroy_below", fail)
            assert _erase(client, login(client, cast.MANAGER), customer.id) == 200
    # Committed (the erasure stands), and the bucket moved on; the old key is still in the file.
    assert _bucket_version(db, bucket) == FIRST_VERSION + 1
    assert ShredKeys(path).versions()[bucket] == [FIRST_VERSION, FIRST_VERSION + 1]

    code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 0, err
    assert "old shred keys destroyed (left by an interrupted erasure): 1" in out
    assert ShredKeys(path).versions()[bucket] == [FIRST_VERSION + 1]
    code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 0, err
    assert "shred keys" not in out  # nothing left to do


# --- keys from before shred keys ----------------------------------------------------------------


def test_keys_rotate_masks_data_keys_stored_before_shred_keys(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(master_key=None)  # generated keys: a ring `keys rotate` can add to
    app = create_app(settings)
    with TestClient(app) as client:
        sales = login(client, cast.SALES)
        customers = [register_customer(client, sales, seed=530 + n) for n in range(3)]
    vault = Vault(master_ring_source(settings), ShredKeys(settings.resolved_shred_keys_file))
    master = MasterKey(master_ring_source(settings).prepare().newest)
    # As an older version stored them: the data key itself, wrapped by the master key.
    with db.begin() as connection:
        rows = connection.execute(text("SELECT customer_id, scope, wrapped_key FROM customer_key"))
        for customer_id, scope_name, stored in list(rows):
            scope = KeyScope(scope_name)
            data_key = vault.unwrap_customer_key(stored, customer_id, scope)
            connection.execute(
                text(
                    "UPDATE customer_key SET wrapped_key = :key, shred_bucket = NULL "
                    "WHERE customer_id = :id AND scope = :scope"
                ),
                {
                    "key": master.wrap(data_key, customer_id=customer_id, scope=scope),
                    "id": customer_id,
                    "scope": scope_name,
                },
            )
    assert _stored_versions(db) == {None}
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        assert [_read(client, sales, c) for c in customers] == [200] * 3  # still read

    use_settings(monkeypatch, settings)
    code, out, err = rotate(capsys)
    assert code == 0, err
    assert "6 customer data keys from before shred keys masked" in out
    assert _stored_versions(db) == {FIRST_VERSION}
    with Session(db) as session:
        buckets = session.execute(select(CustomerKey.customer_id, CustomerKey.shred_bucket)).all()
    assert all(bucket == bucket_of(customer_id) for customer_id, bucket in buckets)
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        assert [_read(client, sales, c) for c in customers] == [200] * 3


def test_buckets_a_purge_left_pending_move_on_at_the_next_purge(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A purge that stopped after erasing a batch leaves its buckets marked pending (in the
    erasing transaction); the next run moves them on, and their other keys still open."""
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        neighbour = register_customer(client, sales, seed=540)
        bucket = bucket_of(neighbour.id)
        with db.begin() as connection:
            connection.execute(
                text("UPDATE shred_bucket SET pending = true WHERE bucket = :b"), {"b": bucket}
            )
        code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
        assert code == 0, err
        assert "shred key buckets moved to a new key" in out and "older copies): 1" in out
        assert _bucket_version(db, bucket) == FIRST_VERSION + 1
        assert ShredKeys(settings.resolved_shred_keys_file).versions()[bucket] == [
            FIRST_VERSION + 1
        ]
        assert _read(client, sales, neighbour) == 200
    with Session(db) as session:
        pending = session.scalars(select(ShredBucket).where(ShredBucket.pending)).all()
    assert not pending


def test_purge_moves_many_pending_buckets_on_once_each_with_several_workers(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Buckets in more batches than one (one bucket a batch here), moved on by several
    transactions at once on PostgreSQL: each exactly once, every key left in them re-masked."""
    settings = make_settings()
    monkeypatch.setattr(purge_module, "SHRED_BUCKET_BATCH", 1)
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        neighbours = [register_customer(client, sales, seed=550 + n) for n in range(5)]
        buckets = {bucket_of(neighbour.id) for neighbour in neighbours}
        with db.begin() as connection:
            for bucket in buckets:
                connection.execute(
                    text("UPDATE shred_bucket SET pending = true WHERE bucket = :b"), {"b": bucket}
                )
        code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
        assert code == 0, err
        assert f"older copies): {len(buckets)}" in out
        assert {_bucket_version(db, bucket) for bucket in buckets} == {FIRST_VERSION + 1}
        versions = ShredKeys(settings.resolved_shred_keys_file).versions()
        assert all(versions[bucket] == [FIRST_VERSION + 1] for bucket in buckets)
        assert [_read(client, sales, neighbour) for neighbour in neighbours] == [200] * 5
    with Session(db) as session:
        stored = session.scalars(
            select(CustomerKey.wrapped_key).where(
                CustomerKey.customer_id.in_([neighbour.id for neighbour in neighbours])
            )
        ).all()
        assert len(stored) == 10
        assert {split_stored(key)[1] for key in stored} == {FIRST_VERSION + 1}
        assert not session.scalars(select(ShredBucket).where(ShredBucket.pending)).all()


def test_purge_waits_for_a_pending_bucket_another_transaction_holds(
    make_settings: SettingsFactory,
    db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The workers skip a bucket held elsewhere (a registration reads its version FOR SHARE);
    the purge still moves it on before it ends, once that transaction has."""
    if db.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's (SQLite's purge has one worker, which waits)")
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        sales = login(client, cast.SALES)
        neighbours = [register_customer(client, sales, seed=570 + n) for n in range(3)]
        buckets = sorted({bucket_of(neighbour.id) for neighbour in neighbours})
        with db.begin() as connection:
            for bucket in buckets:
                connection.execute(
                    text("UPDATE shred_bucket SET pending = true WHERE bucket = :b"), {"b": bucket}
                )
        held = threading.Event()

        def hold() -> None:
            with db.begin() as connection:
                connection.execute(
                    text("SELECT version FROM shred_bucket WHERE bucket = :b FOR SHARE"),
                    {"b": buckets[0]},
                )
                held.set()
                time.sleep(1.0)

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(10)
        code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
        holder.join()
        assert code == 0, err
        assert f"older copies): {len(buckets)}" in out
        assert {_bucket_version(db, bucket) for bucket in buckets} == {FIRST_VERSION + 1}
        assert [_read(client, sales, neighbour) for neighbour in neighbours] == [200] * 3
    with Session(db) as session:
        assert not session.scalars(select(ShredBucket).where(ShredBucket.pending)).all()


def test_keys_re_masked_by_worker_processes_open_here(make_settings: SettingsFactory) -> None:
    """``shopvault purge`` on PostgreSQL re-masks in worker processes that open the key ring
    and the shred key file themselves: what they return opens in this process under the new
    version, wrapped by the key they name, and a version written after they started is found."""
    import asyncio
    import uuid

    from app.remasking import in_workers

    settings = make_settings()
    vault = Vault(
        master_ring_source(settings), ShredKeys(settings.resolved_shred_keys_file).prepare()
    )
    data_keys = {(str(uuid.uuid4()), scope): new_data_key() for _ in range(6) for scope in KeyScope}
    rows = [
        (
            customer_id,
            scope.value,
            vault.wrap_customer_key(key, customer_id, scope, FIRST_VERSION)[1],
        )
        for (customer_id, scope), key in data_keys.items()
    ]
    with in_workers(settings, 2) as remask:
        for version in (FIRST_VERSION + 1, FIRST_VERSION + 2):
            # The second version is written after the workers read the file.
            versions = {bucket_of(customer_id): version for customer_id, _ in data_keys}
            vault.shred_keys.ensure(versions)
            key_id, stored = asyncio.run(remask(rows, versions))
            assert key_id == vault.master_key_id
            for ((customer_id, scope), key), new in zip(data_keys.items(), stored, strict=True):
                assert split_stored(new)[1] == version
                assert vault.unwrap_customer_key(new, customer_id, scope) == key
            rows = [(c, s, new) for (c, s, _), new in zip(rows, stored, strict=True)]
