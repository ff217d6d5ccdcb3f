"""The customer-access pipeline: how every operation that touches a customer opens one.

``open_customer`` runs the check order's steps in the order the spec gives them, each visible
here: the policy row for the caller, purpose and operation (step 3 and the "is a visit or a
reason given" part of step 4); one query that checks the caller's token and the visit and loads
the customer with its wrapped keys (and contracts when asked); the visit's verdict (step 4,
the same answer whether the customer exists or not); existence and state (step 5); and only
then the data keys that the disclosed groups need. ``record_access`` is the one way to record
what was done with the opened customer; the unit of work commits it with any change before the
answer leaves.

A new resource that touches a customer (contracts, forms, messages, …) calls these two and
nothing else of the access machinery — see ``app/contracts/service.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.access import repository
from app.access.context import AccessContext
from app.access.guard import Justified, denied, permit, request_refused, visit_refused
from app.audit.events import Action, EventDraft
from app.crypto import KeyScope
from app.customers.catalogue import CONTRACT_GROUPS, CustomerReader, scopes_for
from app.errors import Forbidden, NotFound, VisitRequired
from app.kit.ids import canonical_id
from app.models import Contract, Customer
from app.models.base import utcnow
from app.policy import (
    PURPOSES_WHILE_SUSPENDED,
    READ_AFTER_ERASURE,
    RETAINED_AFTER_ERASURE,
    WHILE_REPAIR_VISIT_OPEN,
    FieldGroup,
    Operation,
    request_kinds_covering,
)
from app.runtime import Runtime
from app.uow import UnitOfWork
from app.visits.rules import presence_window


class CustomerSuspended(Forbidden):
    slug, title = "customer-suspended", "Use of this customer's data is suspended"
    default_detail = "The customer asked to suspend the use of their data."


@dataclass(frozen=True, slots=True)
class OpenedCustomer:
    """A customer the caller may use: the row, a reader holding only the keys opened, the
    groups the policy discloses, and what justified the access."""

    customer: Customer
    reader: CustomerReader
    justified: Justified
    verified_store: str | None
    contracts: Sequence[Contract] | None  # None: not loaded

    @property
    def id(self) -> str:
        return self.customer.id

    @property
    def groups(self) -> frozenset[FieldGroup]:
        return self.justified.groups


async def open_customer(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str,
    *,
    action: Action,
    resource: str,
    scopes: frozenset[KeyScope] | None = None,
    with_contracts: bool = False,
    not_found: str = "No such customer.",
    suspended_ok: bool = False,
    changes_nothing: bool = False,
) -> OpenedCustomer:
    """Open a customer for ``ctx``'s operation, or raise the refusal the check order gives.

    ``scopes``: the data keys to open (default: those of the disclosed groups);
    ``with_contracts``: load the contract rows in the same query (when the row discloses them);
    ``not_found``: the 404's wording for the resource asked for; ``suspended_ok``: the operation
    applies its own rule to a suspended customer (an urgent notice may still be sent);
    ``changes_nothing``: the operation only reads — the rows may come as detached copies, read
    without a transaction (``repository.load_for_access``)."""
    cid = canonical_id(customer_id)
    asked = (cid,) if cid else ()

    # 1. The policy row and what justifies it.
    justified = permit(ctx, action=action, resource=resource, customer_ids=asked)

    # 2. One query: the caller's token, the visit, the customer, its wrapped keys.
    now = utcnow()
    visit = (
        None
        if justified.visit_id is None
        else repository.VisitCheck(
            justified.visit_id,
            ctx.principal.store_id,
            repair_only=justified.repair_visit_only,
            # A repair visit, open for weeks, justifies most views only near the last proof.
            presence_since=None
            if (ctx.principal.role, ctx.purpose) in WHILE_REPAIR_VISIT_OPEN
            else now - presence_window(runtime.settings),
        )
    )
    request = (
        None
        if justified.subject_request_id is None
        else repository.RequestCheck(
            justified.subject_request_id,
            ctx.principal.store_id,
            request_kinds_covering(ctx.operation),
        )
    )
    contracts_too = with_contracts and bool(justified.groups & CONTRACT_GROUPS)
    row = await repository.load_for_access(
        uow,
        ctx.principal,
        cid or "",
        visit=visit,
        now=now,
        with_contracts=contracts_too,
        request=request,
        detached=changes_nothing,
    )
    uow.principal_verified(row.principal_ok)

    # 3. The visit's (or the customer request's) verdict, before anything is said about the
    # customer.
    if visit is not None and not row.visit_ok:
        raise visit_refused(ctx, action=action, resource=resource, customer_ids=asked)
    if request is not None and not row.visit_ok:
        raise request_refused(ctx, action=action, resource=resource, customer_ids=asked)

    # 4. Existence and state.
    customer = row.customer
    if customer is None:
        raise NotFound(not_found)
    if customer.state == "erased":
        # Only the identity-verification record may outlive erasure, for fraud prevention and
        # audit reads, while the law requires it (its key is destroyed when that ends).
        retained = row.identity_key is not None and (
            ctx.operation is Operation.READ_CUSTOMER
            and (ctx.principal.role, ctx.purpose) in READ_AFTER_ERASURE
        )
        if not retained:
            raise NotFound(not_found)
        justified = justified.narrowed(RETAINED_AFTER_ERASURE)
        contracts_too = False
    suspended = customer.state == "suspended"
    if suspended and not suspended_ok and ctx.purpose not in PURPOSES_WHILE_SUSPENDED:
        raise denied(ctx, CustomerSuspended, action=action, resource=resource, customer_ids=asked)

    # 5. Only the data keys the disclosed groups need.
    needed = scopes_for(justified.groups) if scopes is None else scopes
    ciphers = runtime.vault.open_customer(
        customer.id,
        identity=row.identity_key if KeyScope.IDENTITY in needed else None,
        profile=row.profile_key if KeyScope.PROFILE in needed else None,
    )
    return OpenedCustomer(
        customer,
        CustomerReader(customer, ciphers),
        justified,
        row.verified_store,
        contracts=row.contracts if contracts_too else None,
    )


def record_access(
    uow: UnitOfWork,
    ctx: AccessContext,
    opened: OpenedCustomer,
    *,
    action: Action,
    resource: str,
    fields: frozenset[FieldGroup] | None = None,
    changed_fields: tuple[str, ...] | None = None,
    review_required: bool | None = None,
    presence_method: str | None = None,
) -> None:
    """The event of what was done with an opened customer: ``fields`` are the groups disclosed
    or used (default: every group the policy row discloses); ``review_required`` defaults to
    the justification's (a manager's reason without a visit)."""
    uow.record(
        EventDraft(
            actor=ctx.actor,
            action=action,
            resource=resource,
            purpose=ctx.purpose.value,
            reason=ctx.reason,
            customer_ids=(opened.id,),
            fields=tuple(sorted(opened.groups if fields is None else fields)),
            changed_fields=changed_fields,
            review_required=opened.justified.review_required
            if review_required is None
            else review_required,
            presence_method=presence_method,
            subject_request_id=opened.justified.subject_request_id,
        )
    )


async def admit_registration(
    uow: UnitOfWork, ctx: AccessContext, *, action: Action, resource: str
) -> str:
    """For registering a new customer: the policy row, and a visit at the caller's store that
    is open and has no customer yet (checked with the caller's token in one query). Returns the
    visit's id."""
    justified = permit(ctx, action=action, resource=resource)
    if justified.visit_id is None:
        raise denied(ctx, VisitRequired, action=action, resource=resource)
    row = await repository.load_for_access(
        uow,
        ctx.principal,
        "",
        visit=repository.VisitCheck(
            justified.visit_id, ctx.principal.store_id, for_new_customer=True
        ),
        now=utcnow(),
    )
    uow.principal_verified(row.principal_ok)
    if not row.visit_ok:
        raise visit_refused(ctx, action=action, resource=resource, customer_ids=())
    return justified.visit_id
