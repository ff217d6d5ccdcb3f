"""Everything built once per process: settings, keys, engine, token codec, rate limits."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.chain import derive_chain_key
from app.audit.refusals import RefusalSummaries
from app.audit.repository import AuditLog
from app.auth.tokens import TokenCodec
from app.blind_index import BlindIndex
from app.config import Settings
from app.db import create_request_engine, session_factory
from app.keyring import master_ring_source
from app.keys import Keys, load_keys
from app.kit.idempotency import derive_fingerprint_key
from app.presence.locks import PresenceLocks
from app.presence.proofs import ProofKeys
from app.ratelimit import RateLimits
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
    audit_log: AuditLog
    vault: Vault
    blind_index: BlindIndex
    proof_keys: ProofKeys
    presence_locks: PresenceLocks

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        keys = load_keys(settings)
        engine = create_request_engine(settings.resolved_database_url)
        chain_key = derive_chain_key(keys.index)
        limits = RateLimits(settings.redis_url, key_prefix=settings.redis_key_prefix)
        return cls(
            settings=settings,
            keys=keys,
            engine=engine,
            sessions=session_factory(engine),
            tokens=TokenCodec(
                keys.jwt,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                ttl_seconds=settings.token_ttl_seconds,
            ),
            limits=limits,
            refusals=RefusalSummaries.build(settings.redis_url, settings.redis_key_prefix),
            chain_key=chain_key,
            idempotency_key=derive_fingerprint_key(keys.index),
            audit_log=AuditLog(chain_key),
            vault=Vault(master_ring_source(settings)),
            blind_index=BlindIndex(keys.index),
            proof_keys=ProofKeys(keys.index),
            presence_locks=PresenceLocks(limits.storage, settings.presence_lock),
        )
