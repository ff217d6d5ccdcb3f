"""Everything built once per process: settings, keys, engine, token codec, rate limits."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.alerts import AlertMonitor, alert_rules
from app.audit.chain import AuditKeys
from app.audit.group_commit import GroupCommit
from app.audit.integrity import AuditIntegrity, CheckpointScheduler
from app.audit.refusals import RefusalSummaries
from app.audit.repository import AuditLog
from app.auth.tokens import TokenCodec
from app.blind_index import BlindIndex
from app.config import Settings
from app.db import (
    SnapshotReads,
    WriterQueue,
    create_read_engine,
    create_request_engine,
    is_sqlite,
    session_factory,
)
from app.keyring import master_ring_source
from app.keys import Keys, load_keys
from app.kit.idempotency import derive_fingerprint_key
from app.presence.locks import PresenceLocks
from app.presence.proofs import ProofKeys
from app.ratelimit import RateLimits
from app.shred_keys import ShredKeys
from app.vault import Vault


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    keys: Keys
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tokens: TokenCodec
    limits: RateLimits
    refusals: RefusalSummaries
    chain_key: bytes
    idempotency_key: bytes
    audit_keys: AuditKeys
    audit_log: AuditLog
    # PostgreSQL: read-only requests' events are committed together (SQLite has one writer).
    group_commit: GroupCommit | None
    integrity: AuditIntegrity
    checkpoints: CheckpointScheduler
    alerts: AlertMonitor
    read_engine: AsyncEngine
    # On SQLite: this process's writers, one at a time (``app/db.py``); None on PostgreSQL.
    writers: WriterQueue | None
    vault: Vault
    blind_index: BlindIndex
    proof_keys: ProofKeys
    presence_locks: PresenceLocks
    snapshot_reads: SnapshotReads | None = None

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        keys = load_keys(settings)
        url = settings.resolved_database_url
        writers = WriterQueue() if is_sqlite(url) else None
        # PostgreSQL: the process's connections are shared between the session pool and the
        # snapshot reads (a read-only request's one statement), half each; with one connection
        # in all, the session has it (and runs that statement too).
        snapshot_reads = (
            None
            if writers is not None or settings.db_pool_size < 2
            else SnapshotReads(url, settings.db_pool_size // 2)
        )
        pool_size = settings.db_pool_size - (snapshot_reads.size if snapshot_reads else 0)
        engine = create_request_engine(url, pool_size=pool_size, writers=writers)
        limits = RateLimits(settings.redis_url, key_prefix=settings.redis_key_prefix)
        sessions = session_factory(engine)
        audit_keys = AuditKeys.derive(keys.index)
        audit_log = AuditLog(audit_keys)
        integrity = AuditIntegrity(settings, audit_keys, clock=audit_log.now)
        checkpoints = CheckpointScheduler(integrity, writers=writers)
        read_engine = create_read_engine(url)
        alerts = AlertMonitor(
            sessions, alert_rules(settings), read_sessions=session_factory(read_engine)
        )
        audit_log.listen(checkpoints.on_append)
        audit_log.listen(alerts.on_append)
        return cls(
            settings=settings,
            keys=keys,
            engine=engine,
            sessions=sessions,
            tokens=TokenCodec(
                keys.jwt,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                ttl_seconds=settings.token_ttl_seconds,
            ),
            limits=limits,
            refusals=RefusalSummaries.build(settings.redis_url, settings.redis_key_prefix),
            chain_key=audit_keys.chain,
            idempotency_key=derive_fingerprint_key(keys.index),
            audit_keys=audit_keys,
            audit_log=audit_log,
            group_commit=None
            if is_sqlite(settings.resolved_database_url)
            else GroupCommit(audit_log, sessions),
            integrity=integrity,
            checkpoints=checkpoints,
            alerts=alerts,
            read_engine=read_engine,
            writers=writers,
            vault=Vault(
                master_ring_source(settings),
                ShredKeys(settings.resolved_shred_keys_file).prepare(),
            ),
            blind_index=BlindIndex(keys.index),
            proof_keys=ProofKeys(keys.index),
            presence_locks=PresenceLocks(limits.storage, settings.presence_lock),
            snapshot_reads=snapshot_reads,
        )

    async def drain(self) -> None:
        """Wait for the work started after appends (alert evaluation, a checkpoint)."""
        if self.group_commit is not None:
            await self.group_commit.drain()
        await self.alerts.drain()
        await self.checkpoints.drain()

    async def close(self) -> None:
        """Finish background work (checkpointing this process's last events), then let go of
        the databases."""
        if self.group_commit is not None:
            await self.group_commit.drain()
        await self.alerts.drain()
        await self.checkpoints.close()
        self.integrity.dispose()
        await self.refusals.close()
        await self.read_engine.dispose()
        if self.snapshot_reads is not None:
            await self.snapshot_reads.close()
        await self.engine.dispose()
