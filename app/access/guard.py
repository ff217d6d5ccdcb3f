"""Steps 3 and 4 of the check order: may this role do this operation for this purpose, and is
the access justified (visit, reason)? Every refusal carries its own denied access event."""

from __future__ import annotations

from dataclasses import dataclass

from app.access.context import AccessContext
from app.audit.events import Action, denied_event
from app.auth.tokens import Principal
from app.errors import (
    Forbidden,
    PurposeNotAllowed,
    ReasonRequired,
    SubjectRequestRequired,
    VisitRequired,
)
from app.policy import (
    OPERATIONS,
    FieldGroup,
    Justification,
    Purpose,
    Rule,
    operation_allows,
)


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
            subject_request_id=ctx.subject_request_id,
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
    # The open customer request that justifies it instead (checked in the same query).
    subject_request_id: str | None = None

    @property
    def groups(self) -> frozenset[FieldGroup]:
        return self.rule.groups

    def narrowed(self, groups: frozenset[FieldGroup]) -> Justified:
        """The same justification, disclosing only ``groups`` of the row's."""
        return Justified(
            Rule(self.rule.groups & groups, self.rule.justification),
            self.visit_id,
            self.repair_visit_only,
            self.review_required,
            self.subject_request_id,
        )


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
    operation = OPERATIONS[ctx.operation]
    if needs is Justification.NONE or not operation.justified:
        return Justified(rule, None, repair_visit_only=False, review_required=False)
    if (
        ctx.subject_request_id is not None
        and ctx.purpose is Purpose.SUBJECT_REQUEST
        and needs is Justification.VISIT_OR_REASON
    ):
        # A manager acting on an open customer request: checked in the customer's own query.
        return Justified(
            rule,
            None,
            repair_visit_only=False,
            review_required=False,
            subject_request_id=ctx.subject_request_id,
        )
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
    visit_justifies = operation.visit_justifies
    if needs is Justification.VISIT_OR_REASON and ctx.visit_id is not None and visit_justifies:
        return Justified(rule, ctx.visit_id, repair_visit_only=False, review_required=False)
    if ctx.reason is None:
        if needs is not Justification.VISIT_OR_REASON:
            detail = None
        elif visit_justifies:
            detail = "This access needs X-Visit-Id of an open visit, or X-Access-Reason."
        else:
            detail = (
                "This access needs X-Access-Reason, or X-Subject-Request-Id of an open request."
            )
        raise denied(
            ctx,
            ReasonRequired,
            action=action,
            resource=resource,
            customer_ids=customer_ids,
            detail=detail,
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


def request_refused(
    ctx: AccessContext, *, action: Action, resource: str, customer_ids: tuple[str, ...]
) -> Forbidden:
    """The customer request given is not open, not for this customer, not at the caller's
    store, or of a kind that does not cover the operation: the same answer whether or not the
    customer exists."""
    return denied(
        ctx, SubjectRequestRequired, action=action, resource=resource, customer_ids=customer_ids
    )
