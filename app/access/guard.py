"""Steps 3 and 4 of the check order: may this role use this purpose here, and is the access
justified (visit, reason)? Every refusal carries its own denied access event."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from app.access.context import AccessContext
from app.audit.events import Action, EventDraft, Outcome
from app.errors import Forbidden, PurposeNotAllowed, ReasonRequired, VisitRequired
from app.policy import FieldGroup, Justification, Purpose, Rule, rule_for


def denied(
    ctx: AccessContext,
    problem: type[Forbidden],
    *,
    action: Action,
    resource: str,
    customer_ids: tuple[str, ...] = (),
    detail: str | None = None,
) -> Forbidden:
    return problem(
        detail,
        audit_event=EventDraft(
            actor=ctx.actor,
            action=action,
            resource=resource,
            outcome=Outcome.DENIED,
            purpose=ctx.purpose.value,
            reason=ctx.reason,
            customer_ids=customer_ids,
            denial=problem.slug,
        ),
    )


@dataclass(frozen=True, slots=True)
class Justified:
    """A permitted access, pending the visit check that runs in the customer's own query."""

    rule: Rule
    visit_id: str | None
    repair_visit_only: bool
    review_required: bool

    @property
    def groups(self) -> frozenset[FieldGroup]:
        return self.rule.groups


def permit(
    ctx: AccessContext,
    *,
    action: Action,
    resource: str,
    customer_ids: tuple[str, ...] = (),
    purposes: Collection[Purpose] | None = None,
    requires: Collection[FieldGroup] = (),
) -> Justified:
    """The policy row for this caller and purpose, and what justifies using it.

    ``purposes`` narrows the purposes a route accepts; ``requires`` names groups the row must
    disclose for the route to make sense (a contract change needs ``contracts``)."""
    rule = rule_for(ctx.principal.role, ctx.purpose)
    if (
        rule is None
        or (purposes is not None and ctx.purpose not in purposes)
        or not set(requires) <= rule.groups
    ):
        raise denied(
            ctx, PurposeNotAllowed, action=action, resource=resource, customer_ids=customer_ids
        )
    needs = rule.justification
    if needs is Justification.NONE:
        return Justified(rule, None, repair_visit_only=False, review_required=False)
    if needs in (Justification.VISIT, Justification.REPAIR_VISIT):
        if ctx.visit_id is None:
            raise denied(
                ctx, VisitRequired, action=action, resource=resource, customer_ids=customer_ids
            )
        return Justified(
            rule,
            ctx.visit_id,
            repair_visit_only=needs is Justification.REPAIR_VISIT,
            review_required=False,
        )
    if needs is Justification.VISIT_OR_REASON and ctx.visit_id is not None:
        return Justified(rule, ctx.visit_id, repair_visit_only=False, review_required=False)
    if ctx.reason is None:
        raise denied(
            ctx,
            ReasonRequired,
            action=action,
            resource=resource,
            customer_ids=customer_ids,
            detail="This access needs X-Visit-Id of an open visit, or X-Access-Reason."
            if needs is Justification.VISIT_OR_REASON
            else None,
        )
    return Justified(
        rule,
        None,
        repair_visit_only=False,
        review_required=needs is Justification.VISIT_OR_REASON,
    )


def visit_refused(
    ctx: AccessContext, *, action: Action, resource: str, customer_ids: tuple[str, ...]
) -> Forbidden:
    """The visit given is not open, not at the caller's store, not of the needed type, or not
    for this customer: the same answer whether or not the customer exists."""
    return denied(ctx, VisitRequired, action=action, resource=resource, customer_ids=customer_ids)
