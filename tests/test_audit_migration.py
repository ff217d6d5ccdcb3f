"""Migration 0005 on a database that already has a log: the chains written before it are
registered and their heads authenticated, with the keys of the environment it runs in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from app import migrate
from app.audit.chain import GENESIS_HASH, AuditKeys, seal
from app.audit.checkpoints import Fold
from app.audit.verify import verify
from app.db import create_sync_engine
from app.keys import encode_key
from app.models.base import utcnow
from tests import databases


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    base = databases.postgres_base_url()
    assert base is not None
    with databases.postgres_empty(base) as url:
        yield url


def test_existing_chains_are_registered_and_authenticated(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_key = bytes(range(32))
    keys = AuditKeys.derive(index_key)
    migrate.upgrade(empty_url, "0009")
    engine = create_sync_engine(empty_url)
    at = utcnow()
    event = {
        "id": "44444444-4444-4444-8444-444444444444",
        "chain": "old.1",
        "seq": 1,
        "at": at,
        "actor": "sales1",
        "actor_id": None,
        "role": "sales",
        "store": "S001",
        "terminal": None,
        "purpose": "contract",
        "reason": None,
        "action": "read",
        "resource": "customers/x",
        "customer_ids": [],
        "fields": ["name"],
        "changed_fields": None,
        "result_count": None,
        "outcome": "allowed",
        "denial": None,
        "review_required": False,
        "request_id": "r",
        "encoding_version": 2,
        "presence_method": None,
        "subject_request_id": None,
        "count": None,
        "prev_hash": GENESIS_HASH,
    }
    event["hash"] = seal(keys.chain, GENESIS_HASH, event)
    from app.models import AccessEvent

    row = {k: v for k, v in event.items() if k != "customer_ids"}
    with engine.begin() as connection:
        connection.execute(insert(AccessEvent.__table__), [row])
        connection.execute(
            text("INSERT INTO audit_chain (chain, seq, head_hash) VALUES ('old.1', 1, :h)"),
            {"h": event["hash"]},
        )
    monkeypatch.setenv("SHOPVAULT_INDEX_KEY", encode_key(index_key))
    monkeypatch.setenv("SHOPVAULT_JWT_KEY", encode_key(bytes(range(1, 33))))
    monkeypatch.setenv("SHOPVAULT_MASTER_KEY", encode_key(bytes(range(2, 34))))
    migrate.upgrade(empty_url)
    try:
        with engine.connect() as connection, connection.begin():
            result = verify(connection, keys, Fold(), full=True)
            registered = connection.execute(text("SELECT chain FROM audit_chain_registry"))
            assert [r[0] for r in registered] == ["old.1"]
            assert connection.execute(select(text("mac")).select_from(text("audit_chain"))).scalar()
        assert result.ok, result.as_dict()
        assert result.checked == 1
    finally:
        engine.dispose()
