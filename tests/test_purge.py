"""``shopvault purge``: disposal by the retention rules, on a data set built to test each rule
(dates moved into the past, so the run is at the real time), idempotent, one run at a time; and
pruning of the access log as whole chain prefixes with a signed anchor verification starts from."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.audit.chain import AuditKeys
from app.audit.integrity import AuditIntegrity
from app.audit.pruning import PruneRefused, prune_events
from app.config import Settings
from app.crypto import FieldCipher, KeyScope
from app.errors import AuditUnavailable
from app.keyring import master_ring_source
from app.keys import load_keys
from app.models import (
    AccessEvent,
    Contract,
    Customer,
    CustomerKey,
    Message,
    ShredBucket,
    Visit,
)
from app.retention import purge as purge_module
from app.retention.purge import cutoff, first_kept_day, lanes, purge_lock
from app.retention.rules import add_years, is_due
from app.retention.service import TOKYO, today_in_japan
from app.shred_keys import FIRST_VERSION, ShredKeys, bucket_of
from app.vault import Vault
from tests import cast
from tests.audit_helpers import (
    checkpoint_lines,
    drain,
    drop_append_only_triggers,
    problem_names,
    run_cli,
    verify_cli,
)
from tests.messaging import send
from tests.world import add_contract, open_visit, purpose, register_customer

Headers = dict[str, str]
REASON = "お客様からの削除請求への対応のため"


def _noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, 0, tzinfo=TOKYO).astimezone(UTC)


def _move(db: Engine, model: Any, where: Any, **values: Any) -> None:
    with db.begin() as connection:
        connection.execute(update(model).where(where).values(**values))


def _age_customer(db: Engine, customer_id: str, day: date) -> None:
    """Registered, and every visit opened and closed, on ``day``."""
    _move(db, Customer, Customer.id == customer_id, created_at=_noon(day))
    _move(
        db,
        Visit,
        Visit.customer_id == customer_id,
        opened_at=_noon(day),
        closed_at=_noon(day),
        auto_close_at=None,
    )


def _end_contract(db: Engine, contract_id: str, day: date) -> None:
    _move(db, Contract, Contract.id == contract_id, status="terminated", ended_on=day)


def _state(db: Engine, customer_id: str) -> tuple[str, list[str]]:
    with Session(db) as session:
        customer = session.get(Customer, customer_id)
        assert customer is not None
        scopes = session.scalars(
            select(CustomerKey.scope).where(CustomerKey.customer_id == customer_id)
        ).all()
        return customer.state, sorted(scopes)


def test_the_boundaries_of_a_rule() -> None:
    today = date(2026, 3, 1)
    assert first_kept_day(today, 3) == date(2023, 3, 1)  # kept until today, due tomorrow
    assert is_due(add_years(date(2023, 2, 28), 3), today)
    assert not is_due(add_years(date(2023, 3, 1), 3), today)
    # From 29 February, a year later is 28 February.
    assert first_kept_day(date(2025, 3, 1), 1) == date(2024, 3, 1)
    assert is_due(add_years(date(2024, 2, 29), 1), date(2025, 3, 1))
    assert cutoff(today, 5) == datetime(2021, 3, 1, tzinfo=TOKYO)


def test_purge_disposes_exactly_what_the_rules_say(
    client: TestClient,
    as_member: Callable[..., Headers],
    db: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Several customers per transaction, and several transactions: a batch's edges count too.
    monkeypatch.setattr(purge_module, "CUSTOMER_BATCH", 3)
    sales, manager = as_member(cast.SALES), as_member(cast.MANAGER)
    today = today_in_japan()
    three_years = add_years(today, -3)
    people = {
        name: register_customer(client, sales, seed=400 + i)
        for i, name in enumerate(
            ("ended_long_ago", "ended_just_in_time", "never_contracted", "active", "came_back")
        )
    }
    contracts = {
        name: add_contract(client, sales, people[name].id, people[name].visit_id, seed=i)["id"]
        for i, name in enumerate(("ended_long_ago", "ended_just_in_time", "active"))
    }
    old = add_years(today, -10)
    for name in people:
        _age_customer(db, people[name].id, old)
    _end_contract(db, contracts["ended_long_ago"], three_years - timedelta(days=1))
    _end_contract(db, contracts["ended_just_in_time"], three_years)  # kept until today
    came_back = open_visit(client, sales, "inquiry", people["came_back"].id)
    _move(db, Visit, Visit.id == came_back, opened_at=_noon(today - timedelta(days=300)))

    # Erased on request, their identity records kept: one until yesterday, one until today.
    kept = {
        name: register_customer(client, sales, seed=420 + i)
        for i, name in enumerate(("over", "today"))
    }
    for name, person in kept.items():
        contract = add_contract(client, sales, person.id, person.visit_id, seed=9)["id"]
        _end_contract(db, contract, today - timedelta(days=10))
        erased = client.delete(
            f"/customers/{person.id}", headers=purpose(manager, "subject_request", reason=REASON)
        )
        assert erased.status_code == 200, erased.text
        until = today - timedelta(days=1) if name == "over" else today
        _move(db, Customer, Customer.id == person.id, identity_retain_until=until)

    # Visit notes: ended a year and a day ago (cleared), a year ago to the day (kept).
    notes = {}
    for name, ended in (
        ("old", add_years(today, -1) - timedelta(days=1)),
        ("recent", add_years(today, -1)),
    ):
        visit = open_visit(client, sales, "inquiry", people["active"].id)
        client.patch(f"/visits/{visit}", json={"notes": "再来店の予定"}, headers=sales)
        _move(db, Visit, Visit.id == visit, opened_at=_noon(ended), closed_at=_noon(ended))
        notes[name] = visit

    # Messages: sent a year and a day ago (deleted), sent a year ago (kept), queued long ago.
    visit = open_visit(client, sales, "inquiry", people["active"].id)
    message_ids = {}
    for name in ("old", "recent", "queued"):
        response = send(client, purpose(sales, "support", visit=visit), people["active"].id)
        assert response.status_code == 202, response.text
        message_ids[name] = response.json()["id"]
    made = {
        "old": add_years(today, -1) - timedelta(days=1),
        "recent": add_years(today, -1),
        "queued": add_years(today, -2),
    }
    for name, day in made.items():
        _move(
            db,
            Message,
            Message.id == message_ids[name],
            created_at=_noon(day),
            status="queued" if name == "queued" else "sent",
        )
    drain(client)

    # A dry run says what would go and changes nothing.
    events_before = _count(db, AccessEvent)
    code, out, err = run_cli(settings, monkeypatch, capsys, "purge", "--dry-run")
    assert code == 0, err
    assert "customers would be erased (customer.personal_data): 2" in out
    assert "identity records would be disposed of (customer.identity_record): 1" in out
    assert "visit notes would be cleared (visit.notes): 1" in out
    assert "messages would be deleted (message): 1" in out
    assert out.rstrip().endswith("Dry run: nothing was changed.")
    assert _state(db, people["ended_long_ago"].id) == ("active", ["identity", "profile"])
    assert _count(db, AccessEvent) == events_before

    code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 0, err
    assert "customers were erased (customer.personal_data): 2" in out
    for name in ("ended_long_ago", "never_contracted"):
        assert people[name].id in out
        assert _state(db, people[name].id) == ("erased", [])
    for name in ("ended_just_in_time", "active", "came_back"):
        assert _state(db, people[name].id) == ("active", ["identity", "profile"])
    assert _state(db, kept["over"].id) == ("erased", [])
    assert _state(db, kept["today"].id) == ("erased", ["identity"])
    # The buckets of the run's erasures moved on once at its end: nothing is left pending, the
    # file holds only their current versions, and a key kept in one of them still opens.
    assert "shred key buckets moved to a new key" in out
    in_file = ShredKeys(settings.resolved_shred_keys_file).versions()
    disposed = (people["ended_long_ago"].id, people["never_contracted"].id, kept["over"].id)
    with Session(db) as session:
        assert not session.scalars(select(ShredBucket).where(ShredBucket.pending)).all()
        for customer_id in disposed:
            bucket = session.get(ShredBucket, bucket_of(customer_id))
            assert bucket is not None and bucket.version > FIRST_VERSION
            assert in_file[bucket.bucket] == [bucket.version]
        kept_row = session.get(Customer, kept["today"].id)
        kept_key = session.get(CustomerKey, (kept["today"].id, "identity"))
    assert kept_row is not None and kept_key is not None
    vault = Vault(master_ring_source(settings), ShredKeys(settings.resolved_shred_keys_file))
    identity = vault.unwrap_customer_key(kept_key.wrapped_key, kept_row.id, KeyScope.IDENTITY)
    name = FieldCipher(identity).decrypt(
        kept_row.name_enc, table="customer", column="name", row_id=kept_row.id
    )
    assert name == kept["today"].body["name"]
    with Session(db) as session:
        erased = session.get(Customer, people["ended_long_ago"].id)
        assert erased is not None
        assert (erased.erasure_rule, erased.name_enc, erased.pin_hash) == (
            "customer.personal_data",
            b"",
            None,
        )
        assert session.get(Visit, notes["old"]).notes_enc is None  # type: ignore[union-attr]
        assert session.get(Visit, notes["recent"]).notes_enc is not None  # type: ignore[union-attr]
        left = set(session.scalars(select(Message.id)).all())
        assert left == {message_ids["recent"], message_ids["queued"]}
        disposals = session.scalars(
            select(AccessEvent).where(AccessEvent.action == "dispose", AccessEvent.actor == "cli")
        ).all()
    by_resource = {(e.resource, e.reason) for e in disposals}
    assert (
        f"customers/{people['ended_long_ago'].id}",
        "retention rule customer.personal_data",
    ) in by_resource
    assert (
        f"customers/{kept['over'].id}",
        "retention rule customer.identity_record",
    ) in by_resource
    assert ("visits/notes", "retention rule visit.notes") in by_resource
    assert ("messages", "retention rule message") in by_resource

    # Idempotent: a second run finds nothing more.
    code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 0, err
    assert "customers were erased (customer.personal_data): 0" in out
    assert "messages were deleted (message): 0" in out
    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code == 0, result


def _count(db: Engine, model: Any) -> int:
    with Session(db) as session:
        return len(session.scalars(select(model.id)).all())


def test_one_purge_at_a_time(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with purge_lock(settings.resolved_database_url) as held:
        assert held
        code, out, _err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 0
    assert out.strip() == "shopvault: another purge is running; nothing was done."
    code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 0, err
    assert "another purge" not in out


def test_lanes_share_out_the_customers_with_buckets_of_their_own() -> None:
    ids = [str(uuid.UUID(int=n)) for n in range(400)]
    shares = lanes(ids, 2)
    assert sorted(c for share in shares for c in share) == sorted(ids)
    first, second = ({bucket_of(c) for c in share} for share in shares)
    assert not first & second
    for share in shares:
        assert len(share) > 120  # both lanes have work
        assert share == [c for c in ids if c in set(share)]  # in the order given
    assert lanes(ids, 1) == [ids]


def test_together_stops_the_others_before_their_next_step_and_raises_the_first_failure() -> None:
    """A failure stops the other works between two steps (a transaction is never cut short),
    and is raised as itself, its cause kept (the CLI names a failed commit by its cause)."""
    steps: list[str] = []
    cause = ConnectionResetError("peer")

    async def failing(_failed: asyncio.Event) -> int:
        await asyncio.sleep(0.01)
        raise AuditUnavailable() from cause

    async def steady(failed: asyncio.Event) -> int:
        done = 0
        for _ in range(10):
            if failed.is_set():
                break
            steps.append("begun")
            await asyncio.sleep(0.008)
            steps.append("ended")
            done += 1
        return done

    with pytest.raises(AuditUnavailable) as raised:
        asyncio.run(purge_module._together([failing, steady]))
    assert raised.value.__cause__ is cause
    assert steps.count("begun") == steps.count("ended")
    assert 1 <= steps.count("ended") < 10


def _aged_customers(
    client: TestClient, sales: Headers, db: Engine, seed: int, *, each_lane: int
) -> list[str]:
    """Customers registered ten years ago with no contract, due for disposal: at least
    ``each_lane`` in each of the two lanes."""
    people: list[str] = []
    while min(len(share) for share in lanes(people, 2)) < each_lane:
        assert len(people) < 40, "ids fall in both lanes about evenly"
        people.append(register_customer(client, sales, seed=seed + len(people)).id)
    for customer_id in people:
        _age_customer(db, customer_id, add_years(today_in_japan(), -10))
    return people


def _disposed_customers(db: Engine) -> list[str]:
    with Session(db) as session:
        resources = session.scalars(
            select(AccessEvent.resource).where(AccessEvent.action == "dispose")
        ).all()
    return sorted(r.removeprefix("customers/") for r in resources if r.startswith("customers/"))


def _erased_each_once(
    db: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    people: list[str],
) -> None:
    """Every one of ``people`` erased, with one disposal event each, and the log verifies."""
    assert all(_state(db, customer_id) == ("erased", []) for customer_id in people)
    assert _disposed_customers(db) == sorted(people)
    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code == 0, result


def test_customers_are_erased_in_lanes_each_once(
    client: TestClient,
    as_member: Callable[..., Headers],
    db: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On PostgreSQL two transactions erase at once, each on customers of its own buckets (on
    SQLite one): in batches of two, every customer due is erased, with one event each."""
    monkeypatch.setattr(purge_module, "CUSTOMER_BATCH", 2)
    shared: list[int] = []
    share_out = purge_module.lanes

    def spied(customer_ids: Sequence[str], count: int) -> list[list[str]]:
        shared.append(count)
        return share_out(customer_ids, count)

    monkeypatch.setattr(purge_module, "lanes", spied)
    people = _aged_customers(client, as_member(cast.SALES), db, seed=600, each_lane=4)
    code, out, err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 0, err
    assert shared == [2 if db.dialect.name == "postgresql" else 1]
    assert f"customers were erased (customer.personal_data): {len(people)}" in out
    _erased_each_once(db, settings, monkeypatch, capsys, people)


def test_a_database_error_in_one_lane_stops_the_purge_and_names_only_its_kind(
    client: TestClient,
    as_member: Callable[..., Headers],
    db: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The lanes' failure is the command's database error (exit 1, no traceback, nothing of the
    statement); the refused batch is rolled back, and the next run finishes the work."""
    if db.dialect.name != "postgresql":
        pytest.skip("the lanes are PostgreSQL's (SQLite's purge erases in one)")
    monkeypatch.setattr(purge_module, "CUSTOMER_BATCH", 1)
    people = _aged_customers(client, as_member(cast.SALES), db, seed=620, each_lane=3)
    refused = people[-1]
    with db.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION test_refuse_erasure() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused: %', OLD.id; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER test_refuse_erasure BEFORE UPDATE ON customer FOR EACH ROW "
                f"WHEN (OLD.id = '{refused}') EXECUTE FUNCTION test_refuse_erasure()"
            )
        )
    code, _out, err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 1
    assert "shopvault: database error (" in err
    assert refused not in err and "Traceback" not in err
    assert _state(db, refused) == ("active", ["identity", "profile"])
    assert refused not in _disposed_customers(db)

    with db.begin() as connection:
        connection.execute(text("DROP TRIGGER test_refuse_erasure ON customer"))
        connection.execute(text("DROP FUNCTION test_refuse_erasure()"))
    code, _out, err = run_cli(settings, monkeypatch, capsys, "purge")
    assert code == 0, err
    _erased_each_once(db, settings, monkeypatch, capsys, people)


def _events_by_chain(db: Engine) -> dict[str, list[tuple[int, datetime]]]:
    with Session(db) as session:
        rows = session.execute(select(AccessEvent.chain, AccessEvent.seq, AccessEvent.at)).all()
    chains: dict[str, list[tuple[int, datetime]]] = {}
    for chain, seq, at in sorted(rows):
        chains.setdefault(chain, []).append((seq, at))
    return chains


def test_pruning_whole_prefixes_leaves_a_signed_anchor_verification_starts_from(
    client: TestClient,
    as_member: Callable[..., Headers],
    db: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sales = as_member(cast.SALES)
    for seed in range(430, 433):
        register_customer(client, sales, seed=seed)
    drain(client)
    middle = datetime.now(UTC)
    for seed in range(433, 435):
        register_customer(client, sales, seed=seed)
    drain(client)
    before = _events_by_chain(db)
    old = {c: [s for s, at in events if at < middle] for c, events in before.items()}
    assert sum(len(v) for v in old.values()) > 0

    integrity = AuditIntegrity(settings, AuditKeys.derive(load_keys(settings).index))
    try:
        planned = prune_events(
            settings.resolved_migration_database_url, integrity, cutoff=middle, dry_run=False
        )
    finally:
        integrity.dispose()
    after = _events_by_chain(db)
    assert planned.events == sum(len(v) for v in old.values())
    for chain, events in before.items():
        pruned = len(old[chain])
        assert [s for s, _ in after.get(chain, [])] == [s for s, _ in events[pruned:]]
    anchors = [line for line in checkpoint_lines(settings) if line["kind"] == "prune"]
    assert anchors and set(anchors[-1]["anchors"]) == {c for c, v in old.items() if v}
    for kind in (True, False):
        code, result = verify_cli(settings, monkeypatch, capsys, full=kind)
        assert code == 0, result

    # Without a signed anchor, a missing prefix is still reported.
    drop_append_only_triggers(db)
    chain = next(c for c, events in after.items() if events)
    first = after[chain][0][0]
    with db.begin() as connection:
        ids = [
            r[0]
            for r in connection.execute(
                text("SELECT id FROM access_event WHERE chain = :c AND seq = :s"),
                {"c": chain, "s": first},
            )
        ]
        connection.execute(
            text("DELETE FROM access_event_customer WHERE event_id = :i"), {"i": ids[0]}
        )
        connection.execute(text("DELETE FROM access_event WHERE id = :i"), {"i": ids[0]})
    code, result = verify_cli(settings, monkeypatch, capsys, full=True)
    assert code == 1
    assert problem_names(result) & {"seq-gap", "hash-mismatch"}
    assert uuid.UUID(ids[0])


def test_only_the_owner_prunes_access_events(
    backend: str,
    client: TestClient,
    as_member: Callable[..., Headers],
    db: Engine,
    settings: Settings,
    database_url: str,
) -> None:
    if backend != "postgres":
        pytest.skip("roles are PostgreSQL's (on SQLite whoever writes the file owns it)")
    register_customer(client, as_member(cast.SALES), seed=440)
    drain(client)
    role = f"sv_app_{uuid.uuid4().hex[:10]}"
    with db.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN"))
        connection.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        connection.execute(
            text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        )
    app_url = make_url(database_url).set(username=role).render_as_string(hide_password=False)
    events = _count(db, AccessEvent)
    integrity = AuditIntegrity(settings, AuditKeys.derive(load_keys(settings).index))
    try:
        with pytest.raises(PruneRefused, match="owner"):
            prune_events(app_url, integrity, cutoff=datetime.now(UTC), dry_run=False)
        assert _count(db, AccessEvent) == events
        assert not [line for line in checkpoint_lines(settings) if line["kind"] == "prune"]
    finally:
        integrity.dispose()
        with db.begin() as connection:
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE {role}"))
