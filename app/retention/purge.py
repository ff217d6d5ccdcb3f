"""Disposal by schedule: ``shopvault purge [--dry-run]`` applies the retention rules
(``app/retention/rules.py``).

- customers with no active contract, past ``customer.personal_data``: erased by crypto-shredding
  and row deletion (``app/rights/erasure.py``), leaving the tombstone (id, when, rule);
- erased customers' identity-verification records past ``customer.identity_record``: their key
  and values destroyed;
- visit notes and repair symptoms past ``visit.notes``: cleared;
- sent or failed messages past ``message``: deleted;
- access events past ``access_event``: pruned only as the owner (``app/audit/pruning.py``);
- paper forms due: listed (a person shreds paper);
- then each shred key bucket of the run's erasures moves on once, and the old versions are
  destroyed, with those an interrupted erasure left behind (``app/shredding.py``): from then on
  the erased keys open nothing in older copies of the database either.

Every disposal is recorded (``dispose`` events: one per customer; one per batch of notes or
messages, naming the customers concerned). Customers are disposed of in batches, a transaction
each, after checking the rule again under row locks: running twice, or on two machines at once,
disposes of nothing twice (and on PostgreSQL an advisory lock lets one purge run at a time). On
PostgreSQL two lanes of batches run at once, each on the customers of its own shred key buckets.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app import shredding
from app.audit.events import Action, Actor, EventDraft
from app.db import create_sync_engine, is_sqlite
from app.remasking import Remasker
from app.retention import repository
from app.retention.rules import (
    CUSTOMER_RULE,
    IDENTITY_RECORD_RULE,
    MESSAGE_RULE,
    VISIT_NOTES_RULE,
    CustomerFacts,
    RetentionRule,
    add_years,
    is_due,
    retain_until,
)
from app.retention.service import TOKYO, date_in_japan
from app.rights import erasure
from app.shred_keys import bucket_of
from app.uow import UnitOfWork
from app.vault import Vault

BATCH = 500
# Customers disposed of per transaction: their rows and their shred key buckets stay locked
# until it commits, holding off registrations in those buckets for that long (on PostgreSQL two
# such transactions run at once, so about 400 of the 4,096 buckets at a time).
CUSTOMER_BATCH = 200
# Shred key buckets moved on per transaction at the end of a run (their other keys re-masked).
SHRED_BUCKET_BATCH = 256
# Transactions at once on PostgreSQL: erasing customers, then moving buckets on.
WORKERS = 2
# pg_try_advisory_lock key: "shopvault purge" (any constant shared by every purge).
ADVISORY_LOCK_KEY = 0x73765F7075726765

Result = TypeVar("Result")


class Transact(Protocol):
    """Runs one piece of work in a unit of work of its own, and commits it."""

    async def __call__(self, work: Callable[[UnitOfWork], Awaitable[Result]]) -> Result: ...


Progress = Callable[[str, int, int], None]


def _no_progress(_what: str, _done: int, _total: int) -> None:
    return None


@dataclass
class PurgeOutcome:
    today: date
    dry_run: bool
    customers: list[str] = field(default_factory=list)
    identity_records: list[str] = field(default_factory=list)
    visit_notes: int = 0
    messages: int = 0
    # Shred key buckets moved on once for the run's erasures (``app/shredding.py``).
    shred_buckets_advanced: int = 0
    # Old shred key versions an interrupted erasure had left.
    shred_keys_destroyed: int = 0


def prefilter(now: datetime, rule: RetentionRule) -> datetime:
    """A time before which every record the rule disposes of lies (and a little more): the
    exact rule is then checked record by record."""
    return now - timedelta(days=365 * rule.years - 2)


def first_kept_day(today: date, years: int) -> date:
    """The first day whose records are still kept on ``today`` under a ``years`` rule."""
    day = add_years(today, -years)
    while is_due(add_years(day - timedelta(days=1), years), today) is False:
        day -= timedelta(days=1)
    while is_due(add_years(day, years), today):
        day += timedelta(days=1)
    return day


def cutoff(today: date, years: int) -> datetime:
    """Records made before this instant (Asia/Tokyo midnight) are past a ``years`` rule."""
    return datetime.combine(first_kept_day(today, years), time(), TOKYO)


# --- customers ----------------------------------------------------------------------------------


def _dispose_event(
    actor: Actor,
    rule: RetentionRule,
    resource: str,
    *,
    customer_ids: tuple[str, ...],
    fields: tuple[str, ...] = (),
    result_count: int | None = None,
) -> EventDraft:
    return EventDraft(
        actor=actor,
        action=Action.DISPOSE,
        resource=resource,
        reason=f"retention rule {rule.key}",
        customer_ids=customer_ids,
        fields=fields,
        result_count=result_count,
    )


async def _customers_due(uow: UnitOfWork, customer_ids: Sequence[str], now: datetime) -> list[str]:
    """The customers the customer rule disposes of, exactly, with their rows locked."""
    facts = await repository.disposal_facts(uow.session, customer_ids, now)
    today = date_in_japan(now)
    due = []
    for customer_id in customer_ids:
        found = facts.get(customer_id)
        if found is None or found.state == "erased" or found.open_visit:
            continue
        rule_facts = CustomerFacts(
            active_contract=found.active_contracts > 0,
            last_contract_end=found.last_contract_end,
            consent_granted=False,
            last_consent_end=None,
        )
        made_on = date_in_japan(found.last_activity)
        if is_due(retain_until(CUSTOMER_RULE, made_on=made_on, facts=rule_facts), today):
            due.append(customer_id)
    return due


async def _dispose_customers(
    uow: UnitOfWork, vault: Vault, customer_ids: Sequence[str], actor: Actor, now: datetime
) -> list[str]:
    due = await _customers_due(uow, customer_ids, now)
    erased = await erasure.erase_many(
        uow, vault, due, rule=CUSTOMER_RULE.key, now=now, shred_later=True
    )
    for one in erased:
        uow.record(
            _dispose_event(
                actor,
                CUSTOMER_RULE,
                f"customers/{one.customer_id}",
                customer_ids=(one.customer_id,),
                fields=tuple(sorted(one.groups)),
            )
        )
    return due


async def _dispose_identities(
    uow: UnitOfWork,
    customer_ids: Sequence[str],
    actor: Actor,
    today: date,
    *,
    dry_run: bool,
) -> list[str]:
    rows = await repository.lock_identity_records(uow.session, customer_ids)
    due = [cid for cid, state, until in rows if state == "erased" and is_due(until, today)]
    if dry_run or not due:
        return due
    groups = await erasure.dispose_identities(uow, due)
    for customer_id in due:
        uow.record(
            _dispose_event(
                actor,
                IDENTITY_RECORD_RULE,
                f"customers/{customer_id}",
                customer_ids=(customer_id,),
                fields=tuple(sorted(groups)),
            )
        )
    return due


# --- rows of a rule -----------------------------------------------------------------------------


def _batches(items: Sequence[Result], size: int = BATCH) -> Iterator[Sequence[Result]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def lanes(customer_ids: Sequence[str], count: int) -> list[list[str]]:
    """The customers shared out between ``count`` transactions erasing at once, each lane with
    shred key buckets of its own: an erasure marks its customers' buckets pending under row
    locks, so two lanes sharing a bucket would wait for each other (the order within a lane is
    the order given)."""
    shares: list[list[str]] = [[] for _ in range(count)]
    for customer_id in customer_ids:
        shares[bucket_of(customer_id) % count].append(customer_id)
    return shares


Work = Callable[[asyncio.Event], Coroutine[Any, Any, Result]]


async def _together(works: Sequence[Work[Result]]) -> list[Result]:
    """Run ``works`` at once, each given an event that is set once one of them has failed: the
    others then stop before their next transaction, rather than being cancelled in the middle of
    one (a unit of work cut short there would not put back what it took for its commit, such as
    the refusal summaries). Once all have stopped, the first failure is raised as itself (not in
    an exception group, which the CLI would not know for a database error)."""
    failed = asyncio.Event()

    async def watched(work: Work[Result]) -> Result:
        try:
            return await work(failed)
        except BaseException:
            failed.set()
            raise

    outcomes = await asyncio.gather(*(watched(work) for work in works), return_exceptions=True)
    results: list[Result] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results


async def purge(
    transact: Transact,
    vault: Vault,
    actor: Actor,
    *,
    now: datetime,
    dry_run: bool,
    progress: Progress = _no_progress,
    workers: int = 1,
    remasker: Remasker | None = None,
) -> PurgeOutcome:
    """Apply the rules to the database's rows (the access log is pruned separately).
    ``workers``: transactions erasing customers, then moving shred key buckets on, at once (1 on
    SQLite, whose writers take turns); ``remasker``: where the latter re-mask keys (by default,
    in this process)."""
    today = date_in_japan(now)
    outcome = PurgeOutcome(today=today, dry_run=dry_run)

    read = transact

    async def customers(uow: UnitOfWork) -> list[str]:
        return await repository.customers_past(uow.session, prefilter(now, CUSTOMER_RULE), now)

    candidates = await read(customers)
    done = 0

    def lane(customer_ids: Sequence[str]) -> Work[list[str]]:
        async def run(failed: asyncio.Event) -> list[str]:
            nonlocal done
            disposed: list[str] = []
            for chunk in _batches(customer_ids, CUSTOMER_BATCH):
                if failed.is_set():
                    break

                async def some(uow: UnitOfWork, ids: Sequence[str] = chunk) -> list[str]:
                    if dry_run:
                        return await _customers_due(uow, ids, now)
                    return await _dispose_customers(uow, vault, ids, actor, now)

                disposed += await read(some)
                done += len(chunk)
                progress("customers", done, len(candidates))
            return disposed

        return run

    # Each batch waits for the database about as long as it works itself: with two lanes, one
    # works while the other's statements run.
    due = {
        customer_id
        for share in await _together([lane(ids) for ids in lanes(candidates, workers) if ids])
        for customer_id in share
    }
    outcome.customers = [customer_id for customer_id in candidates if customer_id in due]

    async def records(uow: UnitOfWork) -> list[str]:
        return await repository.identity_records_past(uow.session, today)

    identities = await read(records)
    done = 0
    for chunk in _batches(identities, CUSTOMER_BATCH):

        async def kept(uow: UnitOfWork, ids: Sequence[str] = chunk) -> list[str]:
            return await _dispose_identities(uow, ids, actor, today, dry_run=dry_run)

        outcome.identity_records += await read(kept)
        done += len(chunk)
        progress("identity records", done, len(identities))

    async def notes(uow: UnitOfWork) -> Sequence[tuple[str, str | None, datetime]]:
        return await repository.visit_notes_past(uow.session, prefilter(now, VISIT_NOTES_RULE), now)

    visits = await read(notes)
    due_visits = [
        (vid, cid)
        for vid, cid, end in visits
        if is_due(add_years(date_in_japan(end), VISIT_NOTES_RULE.years), today)
    ]
    outcome.visit_notes = len(due_visits)
    if not dry_run:
        for batch in _batches(due_visits):

            async def clear(
                uow: UnitOfWork, batch: Sequence[tuple[str, str | None]] = batch
            ) -> None:
                await repository.clear_visit_notes(uow.session, [vid for vid, _ in batch])
                uow.record(
                    _dispose_event(
                        actor,
                        VISIT_NOTES_RULE,
                        "visits/notes",
                        customer_ids=tuple(dict.fromkeys(c for _, c in batch if c)),
                        result_count=len(batch),
                    )
                )

            await read(clear)

    async def sent(uow: UnitOfWork) -> Sequence[tuple[str, str, datetime]]:
        return await repository.messages_past(uow.session, prefilter(now, MESSAGE_RULE))

    messages = await read(sent)
    due_messages = [
        (mid, cid)
        for mid, cid, made in messages
        if is_due(add_years(date_in_japan(made), MESSAGE_RULE.years), today)
    ]
    outcome.messages = len(due_messages)
    if not dry_run:
        for batch in _batches(due_messages):

            async def remove(uow: UnitOfWork, batch: Sequence[tuple[str, str]] = batch) -> None:
                await repository.delete_messages(uow.session, [mid for mid, _ in batch])
                uow.record(
                    _dispose_event(
                        actor,
                        MESSAGE_RULE,
                        "messages",
                        customer_ids=tuple(dict.fromkeys(c for _, c in batch)),
                        result_count=len(batch),
                    )
                )

            await read(remove)

    if not dry_run:

        async def advancing(skip_locked: bool, failed: asyncio.Event | None = None) -> int:
            async def advance(uow: UnitOfWork) -> int:
                return await shredding.advance_pending(
                    uow, vault, SHRED_BUCKET_BATCH, skip_locked=skip_locked, remasker=remasker
                )

            moved = 0
            while not (failed and failed.is_set()) and (batch := await read(advance)):
                moved += batch
            return moved

        # Several transactions at once, each on buckets of its own: while one waits for the
        # database to store its re-masked keys, another re-masks (Python) its next batch. They
        # skip buckets held by others; the last pass waits for those.
        if workers > 1:
            moved = await _together([partial(advancing, True)] * workers)
            outcome.shred_buckets_advanced = sum(moved)
        outcome.shred_buckets_advanced += await advancing(False)

        async def sweep(uow: UnitOfWork) -> int:
            return await shredding.sweep(uow.session, vault)

        outcome.shred_keys_destroyed = await read(sweep)
    return outcome


# --- one purge at a time ------------------------------------------------------------------------


@contextmanager
def purge_lock(database_url: str) -> Iterator[bool]:
    """Held for the whole run: PostgreSQL's advisory lock (every machine), or on SQLite a file
    lock beside the database. False: another purge holds it."""
    if is_sqlite(database_url):
        path = Path(make_url(database_url).database or "shopvault.db")
        lock_path = path.with_name(path.name + ".purge-lock")
        with open(lock_path, "a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            held = bool(
                connection.execute(select(func.pg_try_advisory_lock(ADVISORY_LOCK_KEY))).scalar()
            )
            connection.commit()
            try:
                yield held
            finally:
                if held:
                    connection.execute(select(func.pg_advisory_unlock(ADVISORY_LOCK_KEY)))
                    connection.commit()
    finally:
        engine.dispose()
