"""``shopvault keys rotate``: move every data key to the newest master key, then retire the rest.

The procedure is online and can be interrupted anywhere; running it again carries on:

1. The new key is in every process's ring before anything is wrapped with it: with generated
   keys the command appends it to ``DATA_DIR/master.key`` (written whole and fsynced, see
   ``app.keyring``); with keys in the environment the operator configures it first (README).
2. The older keys are marked superseded (``master_key_retirement``), in their own transaction.
3. Data keys wrapped by a superseded key are unwrapped and wrapped again with the newest key in
   batches, one transaction each (with its access event). The data itself is untouched.
4. A superseded key that no row names any more is retired. On PostgreSQL the count runs under a
   ``SHARE`` lock on the key tables, which waits for writers in flight and holds off new ones; on
   SQLite there is one writer at a time anyway. From the commit on, the database refuses a data
   key that names the retired key (migration 0006), so a process that wrapped with it just before
   cannot leave a row nobody can open. Only then does the key leave ``master.key``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy import delete, func, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.events import Action, Actor, EventDraft
from app.crypto import DecryptionError, KeyScope, MasterKey
from app.keyring import MasterKeyRing
from app.models import CustomerKey, MasterKeyRetirement, ServiceKey, ShredBucket
from app.models.base import utcnow
from app.shred_keys import ShredKeys, bucket_of, split_stored, with_version
from app.uow import UnitOfWork
from app.vault import SERVICE_KEY_OWNER

DEFAULT_BATCH_SIZE = 500
# Rounds of "re-wrap what is left, then retire": more than one only when processes that had not
# yet seen the new key kept wrapping with an old one while the first round ran.
RETIRE_ROUNDS = 5

Result = TypeVar("Result")


class Transact(Protocol):
    """Runs ``work`` in its own unit of work and commits it (data and access events together)."""

    async def __call__(self, work: Callable[[UnitOfWork], Awaitable[Result]]) -> Result: ...


class RotationError(Exception):
    """A data key could not be moved; reported on one line, nothing of its batch is changed."""


@dataclass(frozen=True)
class KeyUsage:
    """How many data keys each master key wraps, and what rotations have recorded."""

    rows: dict[str, int]
    superseded: frozenset[str]  # superseded, not retired yet
    retired: frozenset[str]


@dataclass
class RotationReport:
    target_id: str
    rewrapped: int = 0
    masked: int = 0  # customer data keys stored before shred keys, masked now
    retired: list[str] = field(default_factory=list)
    # Keys of the ring that an earlier, interrupted run retired already.
    retired_earlier: list[str] = field(default_factory=list)
    still_used: dict[str, int] = field(default_factory=dict)
    # Data keys named by a master key that is not in the ring: nothing can open them here.
    unknown: dict[str, int] = field(default_factory=dict)


# --- queries ------------------------------------------------------------------------------------


async def key_usage(session: AsyncSession) -> KeyUsage:
    both = union_all(
        select(CustomerKey.master_key_id.label("id")),
        select(ServiceKey.master_key_id.label("id")),
    ).subquery()
    counted = await session.execute(select(both.c.id, func.count()).group_by(both.c.id))
    rows: dict[str, int] = {key_id: count for key_id, count in counted}
    records = (await session.execute(select(MasterKeyRetirement))).scalars().all()
    return KeyUsage(
        rows=rows,
        superseded=frozenset(r.id for r in records if r.retired_at is None),
        retired=frozenset(r.id for r in records if r.retired_at is not None),
    )


async def supersede(session: AsyncSession, key_ids: Collection[str], target_id: str) -> list[str]:
    """Record that data keys move away from ``key_ids`` to ``target_id`` (no commit).

    Returns the keys superseded now (not already by an earlier run)."""
    records = {
        r.id: r
        for r in (
            await session.execute(
                select(MasterKeyRetirement).where(MasterKeyRetirement.id.in_([*key_ids, target_id]))
            )
        ).scalars()
    }
    target = records.get(target_id)
    if target is not None:
        if target.retired_at is not None:
            raise RotationError(f"master key {target_id} is retired; it cannot wrap data keys")
        # Superseded earlier, the newest again now (a rotation was turned back): it stays.
        await session.execute(
            delete(MasterKeyRetirement).where(MasterKeyRetirement.id == target_id)
        )
    now = utcnow()
    added = [key_id for key_id in key_ids if key_id not in records and key_id != target_id]
    for key_id in added:
        session.add(MasterKeyRetirement(id=key_id, superseded_at=now, retired_at=None))
    await session.flush()
    return added


def _unwrap(ring: MasterKeyRing, wrapped: bytes, owner: str, scope: KeyScope, key_id: str) -> bytes:
    old = ring.key(key_id)
    assert old is not None  # only rows of keys in the ring are selected
    try:
        return MasterKey(old).unwrap(wrapped, customer_id=owner, scope=scope)
    except DecryptionError:
        raise RotationError(
            f"a data key named as wrapped by master key {key_id} does not open with it: "
            "the ring holds another key under that name, or the row is damaged"
        ) from None


def _rewrap(ring: MasterKeyRing, stored: bytes, owner: str, scope: KeyScope, key_id: str) -> bytes:
    # A customer's data key stays masked by its shred key: only the master key's wrap changes.
    wrapped, shred_version = split_stored(stored)
    masked = _unwrap(ring, wrapped, owner, scope, key_id)
    rewrapped = MasterKey(ring.newest).wrap(masked, customer_id=owner, scope=scope)
    return rewrapped if shred_version is None else with_version(rewrapped, shred_version)


async def rewrap_batch(
    session: AsyncSession, ring: MasterKeyRing, from_ids: Collection[str], limit: int
) -> int:
    """Re-wrap up to ``limit`` data keys of ``from_ids`` with the ring's newest key (no commit)."""
    target = ring.newest_id
    done = 0
    services = await session.execute(
        select(ServiceKey).where(ServiceKey.master_key_id.in_(from_ids)).with_for_update()
    )
    for service in services.scalars():
        owner = f"{SERVICE_KEY_OWNER}:{service.name}"
        service.wrapped_key = _rewrap(
            ring, service.wrapped_key, owner, KeyScope.PROFILE, service.master_key_id
        )
        service.master_key_id = target
        done += 1
    customers = await session.execute(
        select(CustomerKey)
        .where(CustomerKey.master_key_id.in_(from_ids))
        .limit(max(limit - done, 1))
        .with_for_update()
    )
    for row in customers.scalars():
        scope = KeyScope(row.scope)
        row.wrapped_key = _rewrap(ring, row.wrapped_key, row.customer_id, scope, row.master_key_id)
        row.master_key_id = target
        done += 1
    await session.flush()
    return done


async def mask_batch(
    session: AsyncSession, ring: MasterKeyRing, shred_keys: ShredKeys, limit: int
) -> int:
    """Mask up to ``limit`` customer data keys stored before shred keys existed with their
    bucket's current shred key, wrapping them with the ring's newest key (no commit)."""
    rows = (
        (
            await session.execute(
                select(CustomerKey)
                .where(CustomerKey.shred_bucket.is_(None))
                .order_by(CustomerKey.customer_id, CustomerKey.scope)
                .limit(limit)
                .with_for_update()
            )
        )
        .scalars()
        .all()
    )
    if not rows:
        return 0
    buckets = {row.customer_id: bucket_of(row.customer_id) for row in rows}
    versions = await session.execute(
        select(ShredBucket.bucket, ShredBucket.version)
        .where(ShredBucket.bucket.in_(set(buckets.values())))
        .with_for_update(read=True)
    )
    current = {bucket: version for bucket, version in versions.all()}
    shred_keys.ensure(current)
    newest = MasterKey(ring.newest)
    for row in rows:
        scope, bucket = KeyScope(row.scope), buckets[row.customer_id]
        if ring.key(row.master_key_id) is None:
            raise RotationError(
                f"a data key is wrapped by master key {row.master_key_id}, not in the ring"
            )
        data_key = _unwrap(ring, row.wrapped_key, row.customer_id, scope, row.master_key_id)
        masked = shred_keys.mask(data_key, row.customer_id, scope, current[bucket])
        wrapped = newest.wrap(masked, customer_id=row.customer_id, scope=scope)
        row.wrapped_key = with_version(wrapped, current[bucket])
        row.master_key_id = ring.newest_id
        row.shred_bucket = bucket
    await session.flush()
    return len(rows)


async def retire_unreferenced(
    session: AsyncSession, key_ids: Collection[str], now: datetime
) -> tuple[list[str], dict[str, int]]:
    """Retire each of ``key_ids`` that no data key names; the others with their counts."""
    if session.get_bind().dialect.name == "postgresql":
        # Waits for transactions that are writing data keys, and keeps new ones out until the
        # retirement is committed: the count below is the last word.
        await session.execute(text("LOCK TABLE customer_key, service_key IN SHARE MODE"))
    usage = await key_usage(session)
    retired, used = [], {}
    for key_id in sorted(key_ids):
        if usage.rows.get(key_id, 0):
            used[key_id] = usage.rows[key_id]
            continue
        record = await session.get(MasterKeyRetirement, key_id)
        if record is None:
            session.add(MasterKeyRetirement(id=key_id, superseded_at=now, retired_at=now))
        elif record.retired_at is None:
            record.retired_at = now
        retired.append(key_id)
    await session.flush()
    return retired, used


# --- the procedure ------------------------------------------------------------------------------


def _event(actor: Actor, key_id: str, changed: str) -> EventDraft:
    return EventDraft(
        actor=actor,
        action=Action.ADMIN,
        resource=f"keys/master/{key_id}",
        changed_fields=(changed,),
    )


async def finish_rotation(
    transact: Transact,
    ring: MasterKeyRing,
    *,
    superseded: Iterable[str],
    actor: Actor,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    shred_keys: ShredKeys | None = None,
) -> RotationReport:
    """Move every data key wrapped by a superseded key of ``ring`` to its newest key; retire.

    ``superseded`` names the ring's keys to move away from (besides those superseded by an
    earlier, interrupted run). With ``shred_keys``, customer data keys stored before shred keys
    existed are masked first. Each step commits on its own, so a crash loses nothing.
    """
    target = ring.newest_id
    report = RotationReport(target_id=target)

    async def start(uow: UnitOfWork) -> KeyUsage:
        for key_id in await supersede(uow.session, list(superseded), target):
            uow.record(_event(actor, key_id, "superseded_at"))
        return await key_usage(uow.session)

    usage = await transact(start)
    report.retired_earlier = [key_id for key_id in ring.ids if key_id in usage.retired]
    pending = set(usage.superseded) - {target}
    movable = [key_id for key_id in sorted(pending) if ring.key(key_id) is not None]

    async def batch(uow: UnitOfWork) -> int:
        moved = await rewrap_batch(uow.session, ring, movable, batch_size)
        if moved:
            uow.record(_event(actor, target, "wrapped_keys"))
        return moved

    async def retire(uow: UnitOfWork) -> tuple[list[str], dict[str, int]]:
        retired, used = await retire_unreferenced(uow.session, pending, utcnow())
        for key_id in retired:
            uow.record(_event(actor, key_id, "retired_at"))
        return retired, used

    async def mask(uow: UnitOfWork) -> int:
        assert shred_keys is not None
        masked = await mask_batch(uow.session, ring, shred_keys, batch_size)
        if masked:
            uow.record(_event(actor, target, "masked_keys"))
        return masked

    while shred_keys is not None and (masked := await transact(mask)):
        report.masked += masked
        if on_batch is not None:
            on_batch(masked)

    used: dict[str, int] = {}
    for _round in range(RETIRE_ROUNDS):
        while movable and (moved := await transact(batch)):
            report.rewrapped += moved
            if on_batch is not None:
                on_batch(moved)
        if not pending:
            break
        retired, used = await transact(retire)
        report.retired += retired
        pending -= set(retired)
        if not used or not set(used) & set(movable):
            break
    report.still_used = {key_id: count for key_id, count in used.items() if key_id in movable}
    report.unknown = {
        key_id: count
        for key_id, count in usage.rows.items()
        if ring.key(key_id) is None and key_id not in usage.retired
    }
    return report
