"""Proof of presence: before an existing customer is attached to a visit (or proven present
again in it), the customer shows that they are at the counter — their PIN, their identity
document, or a one-time code sent to their phone — or a manager gives a reason (queued for
review). Refusals are recorded; a wrong proof and an unknown customer get the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from app.audit.events import Action, Actor, denied_event
from app.auth.tokens import Principal
from app.errors import Forbidden
from app.messages.presence import consume_presence_code
from app.policy import REASON_INSTEAD_OF_PRESENCE
from app.presence import repository
from app.presence.proofs import GUESSABLE, PresenceMethod, matches, normalise_any_kept_number
from app.presence.schemas import DocumentProof, PinProof, Presence
from app.runtime import Runtime
from app.uow import UnitOfWork


class PresenceRequired(Forbidden):
    slug, title = "presence-required", "Proof of presence required"
    default_detail = (
        "Attaching an existing customer needs `presence`: their PIN, their identity document, "
        "or a code sent to their phone (a manager may give X-Access-Reason instead)."
    )


class PresenceNotProven(Forbidden):
    slug, title = "presence-not-proven", "Presence not proven"
    default_detail = "The proof of presence does not match."


class PresenceLocked(Forbidden):
    slug, title = "presence-locked", "PIN and code proofs locked"
    default_detail = (
        "Too many failed proofs for this customer: PIN and code proofs are locked. The "
        "customer's identity document (or a manager's reason) still works."
    )


@dataclass(frozen=True, slots=True)
class Proven:
    method: PresenceMethod
    review_required: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A recorded refusal of a proof: the attach event, denied, naming the method tried (never
    the proof)."""

    actor: Actor
    resource: str
    customer_id: str
    reason: str | None

    def __call__(
        self, problem: type[Forbidden], method: PresenceMethod | None, **headers: str
    ) -> Forbidden:
        event = denied_event(
            self.actor,
            Action.ATTACH,
            self.resource,
            problem.slug,
            reason=self.reason,
            customer_ids=(self.customer_id,),
        )
        return problem(
            audit_event=replace(event, presence_method=method.value if method else None),
            headers=headers or None,
        )


async def prove(
    uow: UnitOfWork,
    runtime: Runtime,
    principal: Principal,
    customer_id: str,
    presence: Presence | None,
    *,
    reason: str | None,
    resource: str,
    now: datetime,
) -> Proven:
    """Check the proof for ``customer_id`` (a canonical id), or raise the recorded refusal."""
    refuse = Refusal(principal.actor, resource, customer_id, reason)
    locks = runtime.presence_locks
    if presence is None:
        if reason is None or principal.role not in REASON_INSTEAD_OF_PRESENCE:
            raise refuse(PresenceRequired, None)
        if await _existing(uow, customer_id) is None:
            raise refuse(PresenceNotProven, PresenceMethod.MANAGER_REASON)
        await locks.lift(customer_id)
        return Proven(PresenceMethod.MANAGER_REASON, review_required=True, reason=reason)

    method = PresenceMethod(presence.method)
    if method in GUESSABLE:
        locked = await locks.attempt(customer_id)
        if locked is not None:
            raise refuse(PresenceLocked, method, **{"Retry-After": str(locked.retry_after)})
    if not await _check(uow, runtime, customer_id, presence, now):
        if method in GUESSABLE:
            await locks.failed(customer_id)
        raise refuse(PresenceNotProven, method)
    if method in GUESSABLE:
        await locks.succeeded(customer_id)
    else:
        await locks.lift(customer_id)
    return Proven(method, review_required=False, reason=None)


async def _existing(uow: UnitOfWork, customer_id: str) -> repository.ProofRow | None:
    row = await repository.proof_row(uow.session, customer_id)
    return None if row is None or row.state == "erased" else row


async def _check(
    uow: UnitOfWork, runtime: Runtime, customer_id: str, presence: Presence, now: datetime
) -> bool:
    row = await _existing(uow, customer_id)
    keys = runtime.proof_keys
    salt = row.salt if row is not None and row.salt is not None else b""
    if isinstance(presence, PinProof):
        typed = keys.pin_hash(salt, customer_id, presence.pin)
        return matches(row.pin_hash if row else None, typed)
    if isinstance(presence, DocumentProof):
        number = normalise_any_kept_number(presence.number)  # the schema made sure it does
        typed = keys.document_hash(salt, customer_id, number)
        return matches(row.document_hash if row else None, typed)
    if row is None:
        return False
    return await consume_presence_code(
        uow.session, customer_id, presence.code, now, index_key=runtime.keys.index
    )
