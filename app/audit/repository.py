"""Appending to the access log. The only writer of ``access_event`` and ``audit_chain``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.chain import ENCODING_VERSION, GENESIS_HASH, pick_chain, seal
from app.audit.events import EventDraft
from app.models import AccessEvent, AccessEventCustomer, AuditChain
from app.models.base import new_id


async def _advance_chain(session: AsyncSession, chain: str, count: int) -> tuple[int, str]:
    """Reserve ``count`` sequence numbers; the row lock is held until the transaction ends."""
    statement = (
        update(AuditChain)
        .where(AuditChain.chain == chain)
        .values(seq=AuditChain.seq + count)
        .returning(AuditChain.seq, AuditChain.head_hash)
    )
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        dialect_insert = (
            postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        )
        await session.execute(
            dialect_insert(AuditChain)
            .values(chain=chain, seq=0, head_hash=GENESIS_HASH)
            .on_conflict_do_nothing()
        )
        row = (await session.execute(statement)).one()
    last_seq, head_hash = row
    return int(last_seq) - count, str(head_hash)


async def append_events(
    session: AsyncSession,
    chain_key: bytes,
    drafts: Sequence[EventDraft],
    *,
    request_id: str,
    at: datetime,
) -> list[str]:
    """Seal and insert the drafts as one run of one chain; returns the new event ids."""
    if not drafts:
        return []
    chain = pick_chain(drafts[0].actor.store)
    seq, prev_hash = await _advance_chain(session, chain, len(drafts))
    rows: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for draft in drafts:
        seq += 1
        event: dict[str, Any] = {
            "id": new_id(),
            "chain": chain,
            "seq": seq,
            "at": at,
            "actor": draft.actor.name,
            "actor_id": draft.actor.id,
            "role": draft.actor.role,
            "store": draft.actor.store,
            "terminal": draft.actor.terminal,
            "purpose": draft.purpose,
            "reason": draft.reason,
            "action": draft.action.value,
            "resource": draft.resource,
            "customer_ids": list(draft.customer_ids),
            "fields": sorted(draft.fields),
            "changed_fields": sorted(draft.changed_fields)
            if draft.changed_fields is not None
            else None,
            "result_count": draft.result_count,
            "outcome": draft.outcome.value,
            "denial": draft.denial,
            "review_required": draft.review_required,
            "request_id": request_id,
            "encoding_version": ENCODING_VERSION,
        }
        event["prev_hash"] = prev_hash
        event["hash"] = prev_hash = seal(chain_key, prev_hash, event)
        links.extend(
            {"event_id": event["id"], "position": i, "customer_id": cid}
            for i, cid in enumerate(draft.customer_ids)
        )
        del event["customer_ids"]
        rows.append(event)
    await session.execute(insert(AccessEvent), rows)
    if links:
        await session.execute(insert(AccessEventCustomer), links)
    await session.execute(
        update(AuditChain).where(AuditChain.chain == chain).values(head_hash=prev_hash)
    )
    return [row["id"] for row in rows]
