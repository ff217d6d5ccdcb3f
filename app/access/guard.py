"""Steps 3 and 4 of the check order: may this role do this operation for this purpose, and is
the access justified (visit, reason)? Every refusal carries its own denied access event."""

from __future__ import annotations

from dataclasses import dataclass

from app.access.context import AccessContext
from app.audit.events import Action, denied_event
from app.auth.tokens import Principal
from app.errors import Forbidden, PurposeNotAllowed, ReasonRequired, VisitRequired
from app.policy import OPERATIONS, FieldGroup, Justification, Rule, operation_allows


def denied(
    ctx: AccessContext,
    problem: type[Forbidden],
    *,
    action: Action,
    resource: str,
    customer_ids: tuple[str, ...] = (),
    detail: str | None = None,
) -> Forbidden:
    """A refusal of an access with a purpose, carrying its event."""
    return problem(
        detail,
        audit_event=denied_event(
            ctx.actor,
            action,
            resource,
            problem.slug,
            purpose=ctx.purpose.value,
            reason=ctx.reason,
            customer_ids=customer_ids,
        ),
    )


def refuse_role(principal: Principal, *, action: Action, resource: str) -> Forbidden:
    """A refusal of a route the caller's role may not use at all (no purpose involved)."""
    return Forbidden(audit_event=denied_event(principal.actor, action, resource, Forbidden.slug))


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
) -> Justified:
    """The policy row for this caller, purpose and operation, and what justifies using it."""
    rule = operation_allows(ctx.principal.role, ctx.purpose, ctx.operation)
    if rule is None:
        raise denied(
            ctx, PurposeNotAllowed, action=action, resource=resource, customer_ids=customer_ids
        )
    needs = rule.justification
    if needs is Justification.NONE or not OPERATIONS[ctx.operation].justified:
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
