"""The verifier's fast encoding is the writer's canonical encoding, byte for byte, on both
backends, for both encoding versions and for awkward text (so that an untouched log is never
reported as tampered)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session

from app.audit.chain import (
    GENESIS_HASH,
    HASHED_FIELDS_BY_VERSION,
    AuditKeys,
    canonical_encoding,
    seal,
)
from app.audit.verify import (
    _COPY_OPTIONS,
    _COPY_SELECT,
    _all_events,
    _encoded,
    _plain_encoded,
)
from app.config import Settings
from app.keys import decode_key
from app.main import create_app
from app.models import AccessEvent, AccessEventCustomer, AuditChain, AuditChainRegistry
from tests import cast, databases
from tests.audit_helpers import drop_append_only_triggers, problem_names, verify_api
from tests.conftest import login
from tests.world import purpose, register_customer

AWKWARD_REASON = 'お客様の "ご依頼" \\ ＼ 😀 による確認 </td><script>'


def _keys(settings: Settings) -> AuditKeys:
    assert settings.index_key is not None
    return AuditKeys.derive(decode_key(settings.index_key.get_secret_value(), "index"))


def _orm_events(db: Engine) -> dict[str, dict[str, Any]]:
    with Session(db) as session:
        links: dict[str, list[str]] = {}
        for link in session.scalars(
            select(AccessEventCustomer).order_by(AccessEventCustomer.position)
        ):
            links.setdefault(link.event_id, []).append(link.customer_id)
        return {
            event.id: {
                **{c: getattr(event, c) for c in AccessEvent.__table__.columns.keys()},  # noqa: SIM118
                "customer_ids": links.get(event.id, []),
            }
            for event in session.scalars(select(AccessEvent))
        }


def test_the_fast_encoding_is_the_canonical_one(client: TestClient, db: Engine) -> None:
    sales = login(client, cast.SALES, terminal="POS:7_a.b-c")
    customer = register_customer(client, sales, seed=71)
    manager = login(client, cast.MANAGER)
    response = client.get(
        f"/customers/{customer.id}", headers=purpose(manager, "support", reason=AWKWARD_REASON)
    )
    assert response.status_code == 200
    client.post(
        "/customers/search", json={"phone": "090-9999-1234"}, headers=purpose(sales, "contract")
    )
    events = _orm_events(db)
    with db.connect() as connection, connection.begin():
        rows = list(_all_events(connection))
    assert len(rows) == len(events) >= 5
    assert any(event["reason"] == AWKWARD_REASON for event in events.values())
    for row in rows:
        assert _encoded(row) == canonical_encoding(events[row[0]]), row[0]
    if db.dialect.name == "postgresql":
        # The COPY path's template, from the bare columns: the same bytes again.
        plain = 0
        for fields in _copy_lines(db):
            event = events[fields[6].decode()]
            links = ("[" + ",".join(f'"{c}"' for c in event["customer_ids"]) + "]").encode()
            # A text holds no quote, no field an escape: the template's case.
            bare = (3, 4, 6)  # at, chain, id: the template quotes them
            quoted = [f for i, f in enumerate(fields[:17]) if i not in bare and f != b"null"]
            plain_texts = all(f.count(b'"') == 2 for f in quoted)
            encoded = _plain_encoded(fields, links)
            if b"\\" not in b"".join(fields) and plain_texts:
                assert encoded == canonical_encoding(event), event["id"]
                plain += 1
        assert plain >= 4
    assert verify_api(client, full=True)["ok"]


def _copy_lines(db: Engine) -> list[list[bytes]]:
    """The events' lines as the PostgreSQL verification reads them, split into fields."""
    with db.connect() as connection:
        raw: Any = connection.connection.driver_connection
        with (
            raw.cursor() as cursor,
            cursor.copy(
                f"COPY (SELECT {_COPY_SELECT} FROM access_event e) TO STDOUT {_COPY_OPTIONS}"
            ) as copy,
        ):
            return [bytes(line)[:-1].split(b"\t") for line in copy]


def _edit_event(db: Engine, event_id: str, column: str, value: Any) -> None:
    """One column of a stored event changed behind the log's back (its triggers dropped)."""
    with db.begin() as connection:
        connection.execute(
            text(f"UPDATE access_event SET {column} = :value WHERE id = :id"),
            {"value": value, "id": event_id},
        )


def _insert_chain(db: Engine, keys: AuditKeys, event: dict[str, Any]) -> None:
    """A chain of one sealed event, registered and headed."""
    chain, at = event["chain"], event["at"]
    with db.begin() as connection:
        connection.execute(
            insert(AccessEvent), [{k: v for k, v in event.items() if k != "customer_ids"}]
        )
        connection.execute(
            insert(AccessEventCustomer),
            [
                {"event_id": event["id"], "position": n, "customer_id": customer_id}
                for n, customer_id in enumerate(event["customer_ids"])
            ],
        )
        connection.execute(
            insert(AuditChainRegistry),
            [{"chain": chain, "registered_at": at, "mac": keys.registry_mac(chain, at)}],
        )
        connection.execute(
            insert(AuditChain),
            [
                {
                    "chain": chain,
                    "seq": event["seq"],
                    "head_hash": event["hash"],
                    "mac": keys.head_mac(chain, event["seq"], event["hash"]),
                }
            ],
        )


def test_json_columns_with_escapes_are_encoded_from_the_row(
    client: TestClient, settings: Settings, db: Engine
) -> None:
    """Names that ``json.dumps`` escapes (not ASCII, a quote) in ``fields``: PostgreSQL's query
    leaves their encoding to Python; the event verifies, and an edit of it is still caught."""
    login(client, cast.SALES)
    keys = _keys(settings)
    with db.connect() as connection:
        at = connection.execute(select(AccessEvent.at)).scalars().first()
    event: dict[str, Any] = {
        "id": "44444444-4444-4444-8444-444444444444",
        "chain": "escaped.1",
        "seq": 1,
        "at": at,
        "actor": "sales1",
        "actor_id": None,
        "role": "sales",
        "store": "S001",
        "terminal": "POS\t1",
        "purpose": "contract",
        "reason": AWKWARD_REASON,
        "action": "update",
        "resource": "customers/x",
        "customer_ids": ["55555555-5555-4555-8555-555555555555", "x\\y"],
        "fields": ["name", "氏名"],
        "changed_fields": ['a"b', "c\\d"],
        "result_count": None,
        "outcome": "allowed",
        "denial": None,
        "review_required": True,
        "request_id": "escaped\n",
        "encoding_version": 2,
        "presence_method": None,
        "subject_request_id": None,
        "count": 3,
        "prev_hash": GENESIS_HASH,
    }
    event["hash"] = seal(keys.chain, GENESIS_HASH, event)
    _insert_chain(db, keys, event)
    assert verify_api(client, full=True)["ok"]
    assert verify_api(client, full=False)["ok"]
    drop_append_only_triggers(db)
    _edit_event(db, event["id"], "changed_fields", '["a\\"b", "c\\\\e"]')
    result = verify_api(client, full=True)
    assert problem_names(result) == {"hash-mismatch"}
    assert result["first_bad_id"] == event["id"]


def _event(at: Any, **changes: Any) -> dict[str, Any]:
    """A read event, the first of its chain (its hash still to seal), with ``changes``."""
    return {
        "seq": 1,
        "at": at,
        "actor": "sales1",
        "actor_id": None,
        "role": "sales",
        "store": "S001",
        "terminal": "POS-1",
        "purpose": "contract",
        "reason": "plain",
        "action": "read",
        "resource": "customers/x",
        "customer_ids": ["55555555-5555-4555-8555-555555555555"],
        "fields": ["name"],
        "changed_fields": None,
        "result_count": 1,
        "outcome": "allowed",
        "denial": None,
        "review_required": False,
        "request_id": "r",
        "encoding_version": 2,
        "presence_method": None,
        "subject_request_id": None,
        "count": None,
        "prev_hash": GENESIS_HASH,
        **changes,
    }


def test_text_that_needs_escapes_verifies_and_an_edit_is_caught(
    client: TestClient, settings: Settings, db: Engine
) -> None:
    """Text columns and links that JSON escapes, or that COPY writes as escapes: a quote alone,
    a control character COPY leaves as it is, a tab, non-ASCII; each event verifies, and an edit
    of one is caught."""
    login(client, cast.SALES)
    keys = _keys(settings)
    with db.connect() as connection:
        at = connection.execute(select(AccessEvent.at)).scalars().first()
    base = _event(at)
    odd = {
        "reason": 'a "quoted" reason',
        "terminal": "POS\x01",
        "actor": "José 山田",
        "resource": "customers/\tx",
        "customer_ids": ['q"1', "é"],
        "store": "",
        "fields": [],
    }
    ids = []
    for n, (column, value) in enumerate(odd.items()):
        event = {**base, column: value, "id": f"66666666-6666-4666-8666-66666666666{n}"}
        event["chain"] = f"odd.{n}"
        event["hash"] = seal(keys.chain, GENESIS_HASH, event)
        _insert_chain(db, keys, event)
        ids.append(event["id"])
    assert verify_api(client, full=True)["ok"]
    drop_append_only_triggers(db)
    with db.begin() as connection:
        connection.execute(
            text("UPDATE access_event SET reason = :r WHERE id = :id"),
            {"r": 'a "quoted" reason!', "id": ids[0]},
        )
        connection.execute(
            text("UPDATE access_event_customer SET customer_id = 'q' WHERE event_id = :id"),
            {"id": ids[4]},
        )
    result = verify_api(client, full=True)
    assert problem_names(result) == {"hash-mismatch"}
    assert {p["event_id"] for p in result["problems"]} == {ids[0], ids[4]}


def test_the_template_takes_no_shortcut_a_seal_would_accept(
    client: TestClient, settings: Settings, db: Engine
) -> None:
    """The COPY path's template takes a line's fields as they are: a JSON list laid out otherwise
    than SQLAlchemy writes it (same content) still verifies, a name that looks like a separator
    is not compacted away, text holding a backslash and an N is never read as a NULL, and a
    chain may be called "null" (COPY's NULL string)."""
    login(client, cast.SALES)
    keys = _keys(settings)
    with db.connect() as connection:
        at = connection.execute(select(AccessEvent.at)).scalars().first()
    base = _event(at, reason=None, fields=["contact", "name"])
    layout = {**base, "id": "77777777-7777-4777-8777-777777777771", "chain": "layout.1"}
    # A name that is itself ", " looks like json.dumps' separator: stored untouched it verifies;
    # a sealed [","] stored as [", "] (another name) is caught.
    separator = {**base, "id": "77777777-7777-4777-8777-777777777773", "chain": "null"}
    separator["fields"] = [", "]
    comma = {**base, "id": "77777777-7777-4777-8777-777777777774", "chain": "comma.1"}
    comma["fields"] = [",", "name"]
    # Sealed with a real newline, stored with a backslash and an N instead (COPY prints x\\Null):
    # a template that took every backslash-N for a NULL marker would encode it x\nullull, which
    # is the sealed encoding.
    newline = {
        **base,
        "id": "77777777-7777-4777-8777-777777777772",
        "chain": "newline.1",
        "reason": "x\nullull",
    }
    for event in (layout, newline, separator, comma):
        event["hash"] = seal(keys.chain, GENESIS_HASH, event)
        _insert_chain(db, keys, event)
    drop_append_only_triggers(db)
    _edit_event(db, layout["id"], "fields", '[ "contact","name" ]')
    result = verify_api(client, full=True)
    assert result["ok"], result
    _edit_event(db, newline["id"], "reason", "x\\Null")
    _edit_event(db, comma["id"], "fields", '[", ", "name"]')
    result = verify_api(client, full=True)
    assert problem_names(result) == {"hash-mismatch"}
    assert {p["event_id"] for p in result["problems"]} == {newline["id"], comma["id"]}


def test_an_edited_removed_or_added_link_is_caught(client: TestClient, db: Engine) -> None:
    """The customer links are read apart from their events (PostgreSQL merges two streams): a
    link changed, removed or added breaks its event's seal, and only that event's."""
    sales = login(client, cast.SALES)
    customers = [register_customer(client, sales, seed=80 + n) for n in range(3)]
    assert verify_api(client, full=True)["ok"]
    with db.connect() as connection:
        linked = connection.execute(
            text(
                "SELECT event_id, position, customer_id FROM access_event_customer "
                "ORDER BY event_id, position"
            )
        ).all()
    assert len({event_id for event_id, _, _ in linked}) >= 3
    first, second, third = sorted({event_id for event_id, _, _ in linked})[:3]
    drop_append_only_triggers(db)
    with db.begin() as connection:
        connection.execute(
            text(
                "UPDATE access_event_customer SET customer_id = :c "
                "WHERE event_id = :id AND position = 0"
            ),
            {
                "c": customers[0].id if linked[0][2] != customers[0].id else customers[1].id,
                "id": first,
            },
        )
        connection.execute(
            text("DELETE FROM access_event_customer WHERE event_id = :id"), {"id": second}
        )
        connection.execute(
            text(
                "INSERT INTO access_event_customer (event_id, position, customer_id) "
                "VALUES (:id, 99, :c)"
            ),
            {"id": third, "c": customers[2].id},
        )
    result = verify_api(client, full=True)
    assert problem_names(result) == {"hash-mismatch"}
    assert {p["event_id"] for p in result["problems"]} == {first, second, third}


def test_version_1_events_verify_by_their_own_fields(
    client: TestClient, settings: Settings, db: Engine
) -> None:
    login(client, cast.SALES)
    keys = _keys(settings)
    chain = "legacy.1"  # a chain written before version 2, with one event
    with db.connect() as connection:
        at = connection.execute(select(AccessEvent.at)).scalars().first()
    event: dict[str, Any] = {
        "id": "22222222-2222-4222-8222-222222222222",
        "chain": chain,
        "seq": 1,
        "at": at,
        "actor": "sales1",
        "actor_id": None,
        "role": "sales",
        "store": "S001",
        "terminal": None,
        "purpose": "contract",
        "reason": "旧形式の記録",
        "action": "read",
        "resource": "customers/x",
        "customer_ids": ["33333333-3333-4333-8333-333333333333"],
        "fields": ["name"],
        "changed_fields": None,
        "result_count": None,
        "outcome": "allowed",
        "denial": None,
        "review_required": False,
        "request_id": "legacy",
        "encoding_version": 1,
        "presence_method": None,
        "subject_request_id": None,
        "count": None,
        "prev_hash": GENESIS_HASH,
    }
    assert "presence_method" not in HASHED_FIELDS_BY_VERSION[1]
    event["hash"] = seal(keys.chain, GENESIS_HASH, event)
    with db.begin() as connection:
        connection.execute(
            insert(AccessEvent), [{k: v for k, v in event.items() if k != "customer_ids"}]
        )
        connection.execute(
            insert(AccessEventCustomer),
            [{"event_id": event["id"], "position": 0, "customer_id": event["customer_ids"][0]}],
        )
        connection.execute(
            insert(AuditChainRegistry),
            [{"chain": chain, "registered_at": at, "mac": keys.registry_mac(chain, at)}],
        )
        connection.execute(
            insert(AuditChain),
            [
                {
                    "chain": chain,
                    "seq": 1,
                    "head_hash": event["hash"],
                    "mac": keys.head_mac(chain, 1, event["hash"]),
                }
            ],
        )
    assert verify_api(client, full=True)["ok"]
    # Its seal covers only version 1's fields, and version 1 had none of the others (revision
    # 0003 added them empty): a value in one of them is an edit, as is one inside its fields.
    drop_append_only_triggers(db)
    for column, value in (("presence_method", "pin"), ("count", 3), ("reason", "x")):
        _edit_event(db, event["id"], column, value)
        result = verify_api(client, full=True)
        assert problem_names(result) == {"hash-mismatch"}, column
        assert result["first_bad_id"] == event["id"]
        _edit_event(db, event["id"], column, None if column != "reason" else event["reason"])
        assert verify_api(client, full=True)["ok"], column


def test_a_large_log_is_verified_in_several_processes(
    settings: Settings, db: Engine, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "postgres":
        pytest.skip("processes share an exported PostgreSQL snapshot")
    from app.audit import verify as verify_module

    monkeypatch.setattr(verify_module, "PARALLEL_MIN_EVENTS", 1)
    monkeypatch.setattr(verify_module, "MAX_WORKERS", 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    calls: list[int] = []
    in_parallel = verify_module._verify_in_parallel

    def spy(*args: Any) -> None:
        calls.append(args[-1])
        in_parallel(*args)

    monkeypatch.setattr(verify_module, "_verify_in_parallel", spy)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        for _ in range(3):
            login(first, cast.SALES)
            login(second, cast.MANAGER)
        with db.connect() as connection:
            chains = connection.execute(text("SELECT count(*) FROM audit_chain")).scalar_one()
        assert chains >= 2
        result = verify_api(first, full=True)
        assert result["ok"] and result["checked"] >= 6
        drop_append_only_triggers(db)
        with db.begin() as connection:
            victim = connection.execute(
                text("SELECT id FROM access_event WHERE actor = 'manager1' LIMIT 1")
            ).scalar_one()
            connection.execute(
                text("UPDATE access_event SET reason = 'x' WHERE id = :id"), {"id": victim}
            )
        result = verify_api(first, full=True)
    assert problem_names(result) == {"hash-mismatch"} and result["first_bad_id"] == victim
    assert calls and all(workers >= 2 for workers in calls)


def test_the_copy_reader_reads_every_row_and_leaves_the_connection_usable() -> None:
    """The verifier reads COPY from libpq directly: every row in order, in batches; a stream
    closed early or failing leaves the connection out of its COPY, ready for the next statement."""
    base_url = databases.postgres_base_url()
    if base_url is None:
        pytest.skip(f"PostgreSQL tests need {databases.POSTGRES_ENV}")
    import psycopg

    from app.audit import verify as verify_module

    with psycopg.connect(databases._admin_conninfo(base_url), autocommit=True) as raw:
        count = verify_module.BATCH * 2 + 7
        statement = f"COPY (SELECT n, 'x' || n FROM generate_series(1, {count}) n) TO STDOUT"
        batches = list(verify_module._copied(raw.pgconn, statement))
        assert [len(batch) for batch in batches] == [verify_module.BATCH] * 2 + [7]
        lines = [line for batch in batches for line in batch]
        assert lines[0] == b"1\tx1\n" and lines[-1] == f"{count}\tx{count}\n".encode()

        stream = verify_module._copied(raw.pgconn, statement)
        next(stream)
        stream.close()  # the rest never read
        assert raw.execute("SELECT 41 + 1").fetchone() == (42,)
        stream = verify_module._copied(raw.pgconn, "COPY (SELECT 1) TO STDOUT")
        assert next(stream) == [b"1\n"]
        stream.close()  # closed at the last batch, the statement's end not read yet
        assert raw.execute("SELECT 43").fetchone() == (43,)

        # A statement longer than the socket takes at once (the connection is non-blocking).
        values = ",".join(str(n) for n in range(10, 400_010))
        long = (
            f"COPY (SELECT n FROM generate_series(1, 3) n WHERE n <> ALL('{{{values}}}')) TO STDOUT"
        )
        assert len(long) > 2_000_000
        assert [line for batch in verify_module._copied(raw.pgconn, long) for line in batch] == [
            b"1\n",
            b"2\n",
            b"3\n",
        ]

        with pytest.raises(psycopg.errors.UndefinedTable):
            list(verify_module._copied(raw.pgconn, "COPY (SELECT * FROM no_such_table) TO STDOUT"))
        assert raw.execute("SELECT 2").fetchone() == (2,)
        with pytest.raises(psycopg.errors.DivisionByZero):  # fails after rows were sent
            list(
                verify_module._copied(
                    raw.pgconn,
                    f"COPY (SELECT 1 / (n - {count}) FROM generate_series(1, {count}) n) TO STDOUT",
                )
            )
        assert raw.execute("SELECT 3").fetchone() == (3,)
