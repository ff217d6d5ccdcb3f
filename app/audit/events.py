"""What a service records: one draft per access, completed and chained by the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    READ = "read"
    SEARCH = "search"
    CREATE = "create"
    UPDATE = "update"
    ATTACH = "attach"
    MESSAGE = "message"
    EXPORT = "export"
    DELETE = "delete"
    DISPOSE = "dispose"
    LOGIN = "login"
    ADMIN = "admin"


class Outcome(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it, as the access log names them."""

    name: str | None
    id: str | None
    role: str | None
    store: str | None
    terminal: str | None


ANONYMOUS = Actor(name=None, id=None, role=None, store=None, terminal=None)


@dataclass(frozen=True, slots=True)
class EventDraft:
    actor: Actor
    action: Action
    resource: str
    outcome: Outcome = Outcome.ALLOWED
    purpose: str | None = None
    reason: str | None = None
    customer_ids: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    changed_fields: tuple[str, ...] | None = None
    result_count: int | None = None
    review_required: bool = False
    denial: str | None = None
    presence_method: str | None = None
    subject_request_id: str | None = None
    count: int | None = None


def denied_event(
    actor: Actor,
    action: Action,
    resource: str,
    denial: str,
    *,
    purpose: str | None = None,
    reason: str | None = None,
    customer_ids: tuple[str, ...] = (),
    subject_request_id: str | None = None,
) -> EventDraft:
    """The event of a refusal: who tried what, on which resource, and the problem answered."""
    return EventDraft(
        actor=actor,
        action=action,
        resource=resource,
        outcome=Outcome.DENIED,
        purpose=purpose,
        reason=reason,
        customer_ids=customer_ids,
        denial=denial,
        subject_request_id=subject_request_id,
    )
