"""Pruning access events past their retention (``shopvault purge``, as the database owner).

The access log is append-only: triggers refuse every ``DELETE`` (``migrations/…_0005``). Only the
owner of the tables can set them aside, inside the one transaction that prunes, so pruning runs
on ``MIGRATION_DATABASE_URL`` and nowhere else. A chain is pruned as a whole prefix (every event
up to the first one still in retention), never a hole; before anything is deleted, the chain's
**anchor** — the first kept event's seq and its ``prev_hash`` — is signed into the checkpoint file
(``app/audit/checkpoints.py``), and verification starts the chain there. The log is verified
before it is pruned: a log that does not verify is not pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, text

from app.audit.checkpoints import Head
from app.audit.integrity import AuditIntegrity
from app.db import create_sync_engine, is_sqlite

# The SQLite triggers of migration 0005, set aside and put back within the pruning transaction.
_SQLITE_TRIGGERS = {
    "access_event_no_delete": "access_event",
    "access_event_customer_no_delete": "access_event_customer",
}
_SQLITE_TRIGGER_SQL = (
    "CREATE TRIGGER {name} BEFORE DELETE ON {table} "
    "BEGIN SELECT RAISE(ABORT, 'the access log is append-only'); END"
)
_POSTGRES_TRIGGERS = {
    "access_event": "access_event_append_only",
    "access_event_customer": "access_event_customer_append_only",
}


class PruneRefused(Exception):
    """Nothing was pruned, and why (one line)."""


@dataclass(frozen=True, slots=True)
class ChainPrune:
    chain: str
    last_pruned: int  # every event with seq <= this goes
    events: int
    anchor: Head  # (first kept seq, its prev_hash)


@dataclass
class PrunePlan:
    chains: list[ChainPrune] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(c.events for c in self.chains)


def plan(connection: Connection, cutoff: datetime) -> PrunePlan:
    """Per chain, the prefix of events made before ``cutoff`` (up to the first event made at or
    after it: the prefix is whole, so a late out-of-order time keeps what follows)."""
    spans = connection.execute(
        text("SELECT chain, min(seq), max(seq) FROM access_event GROUP BY chain")
    ).all()
    kept: dict[str, int] = dict(
        connection.execute(
            text("SELECT chain, min(seq) FROM access_event WHERE at >= :cutoff GROUP BY chain"),
            {"cutoff": _bind(connection, cutoff)},
        ).all()
    )
    result = PrunePlan()
    for chain, first, last in sorted(spans):
        last_pruned = int(kept.get(chain, int(last) + 1)) - 1
        if last_pruned < int(first):
            continue
        row = connection.execute(
            text(
                "SELECT hash, (SELECT count(*) FROM access_event e "
                "WHERE e.chain = :chain AND e.seq <= :seq) "
                "FROM access_event WHERE chain = :chain AND seq = :seq"
            ),
            {"chain": chain, "seq": last_pruned},
        ).one()
        result.chains.append(
            ChainPrune(chain, last_pruned, int(row[1]), (last_pruned + 1, str(row[0])))
        )
    return result


def _bind(connection: Connection, moment: datetime) -> object:
    # SQLite keeps UTC times as naive text (see UTCDateTime).
    return moment.replace(tzinfo=None) if connection.dialect.name == "sqlite" else moment


def _check_owner(connection: Connection) -> None:
    if connection.dialect.name != "postgresql":
        return  # SQLite: whoever can write the file owns it
    owner = connection.execute(
        text(
            "SELECT bool_and(pg_has_role(current_user, tableowner, 'USAGE')) FROM pg_tables "
            "WHERE schemaname = current_schema() "
            "AND tablename IN ('access_event', 'access_event_customer')"
        )
    ).scalar()
    if not owner:
        raise PruneRefused(
            "access events are pruned only as the owner of the access log's tables: "
            "set SHOPVAULT_MIGRATION_DATABASE_URL to the owner role"
        )


def _delete(connection: Connection, chains: list[ChainPrune]) -> None:
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        for table, trigger in _POSTGRES_TRIGGERS.items():
            connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}"))
    else:
        for name in _SQLITE_TRIGGERS:
            connection.execute(text(f"DROP TRIGGER {name}"))
    pruned = "SELECT id FROM access_event WHERE chain = :chain AND seq <= :seq"
    for chain in chains:
        params = {"chain": chain.chain, "seq": chain.last_pruned}
        connection.execute(
            text(f"DELETE FROM access_event_customer WHERE event_id IN ({pruned})"),  # noqa: S608
            params,
        )
        connection.execute(
            text(f"DELETE FROM access_review WHERE event_id IN ({pruned})"),  # noqa: S608
            params,
        )
        connection.execute(
            text("DELETE FROM access_event WHERE chain = :chain AND seq <= :seq"), params
        )
    if postgres:
        for table, trigger in _POSTGRES_TRIGGERS.items():
            connection.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}"))
    else:
        for name, table in _SQLITE_TRIGGERS.items():
            connection.execute(text(_SQLITE_TRIGGER_SQL.format(name=name, table=table)))


def prune_events(
    owner_url: str, integrity: AuditIntegrity, *, cutoff: datetime, dry_run: bool
) -> PrunePlan:
    """Prune every chain's prefix made before ``cutoff`` (or, ``dry_run``, only say what)."""
    engine = create_sync_engine(owner_url)
    try:
        with engine.connect() as connection:
            if not is_sqlite(owner_url):
                _check_owner(connection)
            planned = plan(connection, cutoff)
            connection.rollback()
        if dry_run or not planned.chains:
            return planned
        verification = integrity.verify(full=False)
        if not verification.ok:
            raise PruneRefused(
                "the access log does not verify (shopvault audit verify); not pruned"
            )
        integrity.record_anchors({c.chain: c.anchor for c in planned.chains})
        with engine.begin() as connection:
            _delete(connection, planned.chains)
        return planned
    finally:
        engine.dispose()
