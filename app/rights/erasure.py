"""Erasure by crypto-shredding, on request (``DELETE /customers/{id}``) and by schedule
(``shopvault purge``).

A customer's data is sealed under two data keys (``app/vault.py``): ``identity`` for the
identity-verification record that 携帯電話不正利用防止法 makes the shop keep until 3 years
after the last contract ended, and ``profile`` for everything else. Erasure deletes the profile
key, the rows that hang off the customer, the proofs of presence and the blind-index values, and
keeps the identity key only while the law requires the record — then that key goes too. The
customer's bucket moves to its next shred key version and the old version is destroyed once the
erasure has committed (``app/shredding.py``): every ciphertext under a deleted key is then
unreadable, in the database and in any copy of it. The customer row stays as the tombstone: id,
when, under which rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from app import shredding
from app.policy import RETAINED_AFTER_ERASURE, FieldGroup
from app.remasking import in_process
from app.retention.rules import IDENTITY_RECORD_RULE, add_years
from app.retention.service import date_in_japan
from app.rights import repository
from app.uow import UnitOfWork
from app.vault import Vault

ON_REQUEST = "subject_request"


class ContractStillActive(Exception):
    """Erasure waits until every contract has ended (the record is needed while it runs)."""


@dataclass(frozen=True, slots=True)
class Erased:
    customer_id: str
    identity_until: date | None  # None: nothing kept
    groups: frozenset[FieldGroup]  # what was destroyed now


def identity_kept_until(ends: list[tuple[str, date | None]], today: date) -> date | None:
    """Until when the identity-verification record must be kept (None: not at all)."""
    if any(status == "active" for status, _ in ends):
        raise ContractStillActive()
    ended = [day for _, day in ends if day is not None]
    if not ended:
        return None  # no contract, no record the law asks for
    until = add_years(max(ended), IDENTITY_RECORD_RULE.years)
    return until if until >= today else None


async def erase(
    uow: UnitOfWork, vault: Vault, customer_id: str, *, rule: str, now: datetime
) -> Erased:
    """Erase the customer now, keeping the identity record only while the law requires it."""
    (erased,) = await erase_many(uow, vault, [customer_id], rule=rule, now=now)
    return erased


async def erase_many(
    uow: UnitOfWork,
    vault: Vault,
    customer_ids: Sequence[str],
    *,
    rule: str,
    now: datetime,
    shred_later: bool = False,
) -> list[Erased]:
    """Erase these customers (rows locked by the caller) in one go: a few statements for all of
    them, and each shred key bucket moved on once — now, or with ``shred_later`` by the caller's
    ``shredding.advance_pending`` (``purge``, at the end of its run)."""
    if not customer_ids:
        return []
    session = uow.session
    today = date_in_japan(now)
    yesterday = today - timedelta(days=1)
    ends = await repository.contract_ends(session, customer_ids)
    until = {cid: identity_kept_until(ends[cid], today) for cid in customer_ids}
    if shred_later:
        await shredding.mark_pending(session, customer_ids)
        versions = {}
    else:
        versions = await shredding.advance(uow, vault, customer_ids)
    await repository.destroy_profile(session, until, rule=rule, now=now)
    await repository.forms_due_now(session, customer_ids, yesterday)
    await repository.identity_forms_until(session, until, yesterday)
    await repository.destroy_identity(session, [cid for cid in customer_ids if until[cid] is None])
    await shredding.remask(session, in_process(vault), versions)
    kept = frozenset(FieldGroup) - RETAINED_AFTER_ERASURE
    return [
        Erased(cid, until[cid], kept if until[cid] is not None else frozenset(FieldGroup))
        for cid in customer_ids
    ]


async def dispose_identities(uow: UnitOfWork, customer_ids: Sequence[str]) -> frozenset[FieldGroup]:
    """The retained identity records of erased customers, once their retention has ended (only
    ``purge`` does this: their buckets move on at the end of its run)."""
    await shredding.mark_pending(uow.session, customer_ids)
    await repository.destroy_identity(uow.session, customer_ids)
    return RETAINED_AFTER_ERASURE
