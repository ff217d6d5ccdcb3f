"""Messages through official channels: sending, history, and presence codes by SMS.

A send follows the check order of every customer access — the caller's role and purpose, then
what justifies it (a visit or a reason), then the customer — and then the message's own rules:
suspension, consent, the daily cap and quiet hours. It uses the customer's ``contact`` group on
the caller's behalf: the customer's profile key seals the rendered message, the address is not
read at all (the worker decrypts it when it delivers), and the caller gets back only the
message's id and status. Every send is an access event with action ``message`` listing
``contact``; every refusal by policy is a denied one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.access import pipeline
from app.access import repository as access_repository
from app.access.context import AccessContext
from app.access.guard import denied, permit, visit_refused
from app.audit.events import Action, EventDraft, Outcome
from app.crypto import FieldCipher, KeyScope
from app.errors import (
    BadHeader,
    Forbidden,
    NotFound,
    PurposeNotAllowed,
    RateLimited,
    ReasonRequired,
    ValidationFailed,
    VisitRequired,
)
from app.kit.idempotency import idempotent_call
from app.kit.ids import MALFORMED_ID, canonical_id, resource_of
from app.kit.pagination import Keyset, PageRequest, cut_page
from app.messages import presence, repository
from app.messages.catalog import CATALOG, Template
from app.messages.rendering import render
from app.messages.rules import (
    MESSAGE_SENDERS,
    PRESENCE_CODE_TTL,
    PRESENCE_CODES_PER_CALLER,
    PRESENCE_CODES_PER_CUSTOMER,
    Category,
    Channel,
    SenderRule,
    SendJustification,
    end_of_quiet_hours,
    in_quiet_hours,
    is_urgent,
    visit_justifies,
)
from app.messages.schemas import (
    MessageAccepted,
    MessageCreate,
    MessageList,
    MessageStatus,
    MessageView,
    PresenceCodeAccepted,
    TemplateList,
    TemplateView,
    VariableView,
)
from app.models import Customer, Message, PresenceCode, Visit
from app.models.base import new_id
from app.policy import FieldGroup, rule_for
from app.runtime import Runtime
from app.uow import UnitOfWork

CONTACT = (FieldGroup.CONTACT.value,)
DAILY_CAP_WINDOW = timedelta(hours=24)
IDEMPOTENCY_ROUTE = "messages"
PRESENCE_CODE_TEMPLATE = "presence_code"


class CategoryNotAllowed(Forbidden):
    slug, title = "message-category-not-allowed", "Message category not allowed"
    default_detail = "Your role may not send messages of this category."


class MessagingSuspended(Forbidden):
    slug, title = "customer-suspended", "Use of this customer's data is suspended"
    default_detail = (
        "The customer suspended the use of their data: only an urgent important notice "
        "(a manager's, with a reason) may be sent."
    )


class ConsentRequired(Forbidden):
    slug, title = "consent-required", "Marketing consent required"
    default_detail = "The customer has not opted in to marketing on this channel."


class NoAddress(ValidationFailed):
    slug, title = "no-address", "No address for this channel"
    default_detail = "The customer has no registered address for this channel."


class MessageCapReached(RateLimited):
    default_detail = "The customer has been sent the most messages allowed in 24 hours."

    def __init__(self, retry_after: int, *, audit_event: EventDraft) -> None:
        super().__init__(
            retry_after, self.default_detail, audit_event=audit_event, kind="message_cap"
        )


class IdempotencyKeyRequired(BadHeader):
    slug, title = "idempotency-key-required", "Idempotency-Key required"
    default_detail = "Send an Idempotency-Key (8-128 letters, digits or . _ : -) with a message."


# --- templates ----------------------------------------------------------------------------------


def list_templates() -> TemplateList:
    return TemplateList(
        items=[
            TemplateView(
                id=t.id,
                title=t.title,
                category=t.category,
                channels=list(t.channels),
                variables=[
                    VariableView(name=v.name, type=v.type, max_length=v.max_length)
                    for v in t.variables
                ],
            )
            for t in CATALOG.templates.values()
        ]
    )


# --- opening the customer -----------------------------------------------------------------------


VisitRule = Callable[[Visit], bool]


async def _open_recipient(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str | None,
    *,
    resource: str,
    visit_rule: VisitRule | None,
) -> tuple[Customer, FieldCipher]:
    """Step 4 for a send: the visit given must be this customer's, at the caller's store, and
    pass ``visit_rule`` (open, or closed within the last 14 days — not the open visit a read
    needs), else ``403``, the same whether or not the customer exists. Then the access pipeline
    opens the customer with the ``contact`` group's key only: it seals the message for the
    worker, and nothing is disclosed."""
    asked = (customer_id,) if customer_id else ()
    if visit_rule is not None:
        visit = None
        if customer_id is not None and ctx.visit_id is not None:
            visit = await repository.visit_of_customer_at_store(
                uow.session, ctx.visit_id, ctx.principal.store_id, customer_id
            )
        if visit is None or not visit_rule(visit):
            raise visit_refused(ctx, action=Action.MESSAGE, resource=resource, customer_ids=asked)
    opened = await pipeline.open_customer(
        uow,
        runtime,
        ctx,
        customer_id or "",
        action=Action.MESSAGE,
        resource=resource,
        scopes=frozenset({KeyScope.PROFILE}),
        suspended_ok=True,
    )
    return opened.customer, opened.reader.ciphers.for_scope(KeyScope.PROFILE)


# --- sending ------------------------------------------------------------------------------------


def _sender_rule(ctx: AccessContext, resource: str, asked: tuple[str, ...]) -> SenderRule:
    """Step 3: the role may use this purpose at all, and may send messages under it."""
    role = ctx.principal.role
    if rule_for(role, ctx.purpose) is None:
        raise denied(
            ctx, PurposeNotAllowed, action=Action.MESSAGE, resource=resource, customer_ids=asked
        )
    sender = MESSAGE_SENDERS.get(role)
    if sender is None:
        raise denied(
            ctx, CategoryNotAllowed, action=Action.MESSAGE, resource=resource, customer_ids=asked
        )
    if sender.purposes is not None and ctx.purpose not in sender.purposes:
        raise denied(
            ctx, PurposeNotAllowed, action=Action.MESSAGE, resource=resource, customer_ids=asked
        )
    return sender


def _needs_visit(
    ctx: AccessContext, sender: SenderRule, resource: str, asked: tuple[str, ...]
) -> bool:
    """Step 4, the headers: whether a visit will be checked (True), or a reason or the purpose
    justifies the send (False)."""
    justification = sender.justification
    if justification is SendJustification.PURPOSE:
        return False
    if ctx.visit_id is not None:
        return True
    if justification is SendJustification.VISIT_OR_REASON:
        if ctx.reason is None:
            raise denied(
                ctx,
                ReasonRequired,
                action=Action.MESSAGE,
                resource=resource,
                customer_ids=asked,
                detail="A message needs X-Visit-Id of a recent visit, or X-Access-Reason.",
            )
        return False
    raise denied(ctx, VisitRequired, action=Action.MESSAGE, resource=resource, customer_ids=asked)


def _template(body: MessageCreate) -> Template:
    template = CATALOG.get(body.template)
    if template is None:
        raise ValidationFailed(
            extra={
                "errors": [
                    {"loc": ["body", "template"], "type": "enum", "msg": "Unknown template."}
                ]
            }
        )
    return template


def _event(
    ctx: AccessContext,
    *,
    resource: str,
    customer_ids: tuple[str, ...],
    outcome: Outcome = Outcome.ALLOWED,
    denial: str | None = None,
    fields: tuple[str, ...] = CONTACT,
    review_required: bool = False,
) -> EventDraft:
    return EventDraft(
        actor=ctx.actor,
        action=Action.MESSAGE,
        resource=resource,
        outcome=outcome,
        purpose=ctx.purpose.value,
        reason=ctx.reason,
        customer_ids=customer_ids,
        fields=fields,
        review_required=review_required,
        denial=denial,
    )


@dataclass(frozen=True, slots=True)
class ConsentBasis:
    basis: str  # service_relationship | opt_in | urgent_reason
    given_at: datetime | None = None
    reason: str | None = None


async def _consent_basis(
    uow: UnitOfWork,
    ctx: AccessContext,
    customer: Customer,
    category: Category,
    channel: Channel,
    *,
    urgent: bool,
    resource: str,
) -> ConsentBasis:
    if category is Category.MARKETING:
        if not getattr(customer, f"marketing_{channel.value}"):
            raise denied(
                ctx,
                ConsentRequired,
                action=Action.MESSAGE,
                resource=resource,
                customer_ids=(customer.id,),
            )
        given_at = await repository.latest_opt_in(uow.session, customer.id, channel.value)
        return ConsentBasis("opt_in", given_at=given_at)
    if urgent:
        return ConsentBasis("urgent_reason", reason=ctx.reason)
    return ConsentBasis("service_relationship")


async def _check_cap(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str, now: datetime
) -> None:
    await repository.lock_customer(uow.session, customer_id)
    cap = runtime.settings.message_daily_cap
    recent = await repository.capped_since(uow.session, customer_id, now - DAILY_CAP_WINDOW)
    if len(recent) < cap:
        return
    frees_at = recent[len(recent) - cap] + DAILY_CAP_WINDOW if cap else now + DAILY_CAP_WINDOW
    raise MessageCapReached(
        int((frees_at - now).total_seconds()) + 1,
        audit_event=_event(
            ctx,
            resource=f"customers/{customer_id}/messages",
            customer_ids=(customer_id,),
            outcome=Outcome.DENIED,
            denial=RateLimited.slug,
        ),
    )


def _seal(cipher: FieldCipher, message_id: str, column: str, value: str) -> bytes:
    return cipher.encrypt(value, table="message", column=column, row_id=message_id)


async def send_message(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str,
    body: MessageCreate,
    *,
    idempotency_key: str,
    now: datetime,
) -> MessageAccepted:
    cid = canonical_id(customer_id)
    asked = (cid,) if cid else ()
    resource = resource_of("customers", customer_id, "/messages")
    sender = _sender_rule(ctx, resource, asked)
    needs_visit = _needs_visit(ctx, sender, resource, asked)
    template = _template(body)
    rendered = render(template, body.channel, body.variables)
    if template.category not in sender.categories:
        raise denied(
            ctx, CategoryNotAllowed, action=Action.MESSAGE, resource=resource, customer_ids=asked
        )
    role = ctx.principal.role
    urgent = is_urgent(role, template.category, ctx.reason)

    caller = ctx.principal.subject
    call = idempotent_call(
        runtime.idempotency_key,
        caller_id=caller,
        key=idempotency_key,
        route=IDEMPOTENCY_ROUTE,
        request={
            "customer": cid,
            "body": body.model_dump(mode="json"),
            "purpose": ctx.purpose.value,
            "visit": ctx.visit_id,
            "reason": ctx.reason,
        },
    )
    first = await call.first_answer(uow.session)
    if first is not None:
        replayed = await repository.message_by_id(uow.session, first)
        if replayed is None:  # erased since: the key names nothing any more
            raise NotFound("No such message.")
        return MessageAccepted(id=replayed.id, status=MessageStatus(replayed.status))

    def visit_rule(visit: Visit) -> bool:
        return visit_justifies(
            visit,
            role=role,
            purpose=ctx.purpose,
            justification=sender.justification,
            presence_window=timedelta(hours=runtime.settings.visit_auto_close_hours),
            now=now,
        )

    customer, profile = await _open_recipient(
        uow, runtime, ctx, cid, resource=resource, visit_rule=visit_rule if needs_visit else None
    )
    if customer.state == "suspended" and not urgent:
        raise denied(
            ctx,
            MessagingSuspended,
            action=Action.MESSAGE,
            resource=resource,
            customer_ids=(customer.id,),
        )
    basis = await _consent_basis(
        uow, ctx, customer, template.category, body.channel, urgent=urgent, resource=resource
    )
    if body.channel is Channel.EMAIL and customer.email_enc is None:
        raise NoAddress(
            audit_event=_event(
                ctx,
                resource=resource,
                customer_ids=(customer.id,),
                outcome=Outcome.DENIED,
                denial=NoAddress.slug,
            )
        )
    if not urgent:
        await _check_cap(uow, runtime, ctx, customer.id, now)

    scheduled = not urgent and in_quiet_hours(now)
    message_id = new_id()
    message = Message(
        id=message_id,
        customer_id=customer.id,
        kind=repository.KIND_MESSAGE,
        channel=body.channel.value,
        template=template.id,
        category=template.category.value,
        status=(MessageStatus.SCHEDULED if scheduled else MessageStatus.QUEUED).value,
        urgent=urgent,
        consent_basis=basis.basis,
        consent_given_at=basis.given_at,
        basis_reason=basis.reason,
        subject_enc=_seal(profile, message_id, "subject", rendered.subject)
        if rendered.subject is not None
        else None,
        body_enc=_seal(profile, message_id, "body", rendered.body),
        created_at=now,
        created_by_id=caller,
        created_by_role=role.value,
        store_id=ctx.principal.store_id,
        visit_id=ctx.visit_id if needs_visit else None,
        due_at=end_of_quiet_hours(now) if scheduled else now,
        attempts=0,
    )
    await repository.add(uow.session, message)
    await call.remember(uow.session, message_id)
    uow.record(
        _event(
            ctx,
            resource=f"messages/{message_id}",
            customer_ids=(customer.id,),
            review_required=not needs_visit
            and sender.justification is SendJustification.VISIT_OR_REASON,
        )
    )
    return MessageAccepted(id=message_id, status=MessageStatus(message.status))


# --- history ------------------------------------------------------------------------------------


def _view(message: Message) -> MessageView:
    pending = message.status in repository.PENDING
    return MessageView(
        id=message.id,
        customer_id=message.customer_id,
        channel=Channel(message.channel),
        template=message.template,
        category=Category(message.category or Category.SUPPORT),
        status=MessageStatus(message.status),
        urgent=message.urgent,
        created_at=message.created_at,
        scheduled_for=message.due_at if pending else None,
        sent_at=message.sent_at,
        failure_reason=message.failure_reason,
    )


async def _open_for_history(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str,
    *,
    resource: str,
    not_found: str = "No such customer.",
) -> str:
    """The purpose rules of a read of the customer (the access pipeline: policy row, visit or
    reason, existence, suspension); the history discloses no field group."""
    opened = await pipeline.open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.READ,
        resource=resource,
        scopes=frozenset(),
        not_found=not_found,
    )
    pipeline.record_access(
        uow, ctx, opened, action=Action.READ, resource=resource, fields=frozenset()
    )
    return opened.id


async def list_messages(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str, page: PageRequest
) -> MessageList:
    resource = resource_of("customers", customer_id, "/messages")
    cid = await _open_for_history(uow, runtime, ctx, customer_id, resource=resource)
    rows = await repository.messages_of(uow.session, cid, page)
    shown, next_cursor = cut_page(rows, page, lambda m: Keyset(m.created_at, m.id))
    return MessageList(items=[_view(m) for m in shown], next=next_cursor)


async def get_message(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, message_id: str
) -> MessageView:
    resource = resource_of("messages", message_id)
    # The policy first: nothing about the message is looked at for a caller it refuses.
    permit(ctx, action=Action.READ, resource=resource)
    mid = canonical_id(message_id)
    message = await repository.message_by_id(uow.session, mid) if mid else None
    await _open_for_history(
        uow,
        runtime,
        ctx,
        message.customer_id if message else "",
        resource=resource,
        not_found="No such message.",
    )
    assert message is not None  # an unknown message's empty customer id is not found above
    return _view(message)


# --- presence codes -----------------------------------------------------------------------------


async def _limit_presence_codes(
    runtime: Runtime, ctx: AccessContext, cid: str | None, resource: str
) -> None:
    """At most 3 codes per customer and 10 per caller an hour (counted before sending)."""
    refusal = _event(
        ctx,
        resource=resource,
        customer_ids=(cid,) if cid else (),
        outcome=Outcome.DENIED,
        denial=RateLimited.slug,
        fields=(),
    )
    per_customer = f"presence-code:customer:{cid or MALFORMED_ID}"
    limits = runtime.limits
    await limits.reserve(
        PRESENCE_CODES_PER_CUSTOMER, per_customer, audit_event=refusal, kind="presence_code"
    )
    try:
        await limits.reserve(
            PRESENCE_CODES_PER_CALLER,
            f"presence-code:caller:{ctx.principal.subject}",
            audit_event=refusal,
            kind="presence_code",
        )
    except RateLimited:
        await limits.forgive(PRESENCE_CODES_PER_CUSTOMER, per_customer)
        raise


async def request_presence_code(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str, *, now: datetime
) -> PresenceCodeAccepted:
    """Send a 6-digit code to the customer's registered phone, at any hour and outside the
    daily cap. The answer is the same whether or not the customer exists or can get one."""
    cid = canonical_id(customer_id)
    asked = (cid,) if cid else ()
    resource = resource_of("customers", customer_id, "/presence-code")
    permit(ctx, action=Action.MESSAGE, resource=resource, customer_ids=asked)
    await _limit_presence_codes(runtime, ctx, cid, resource)
    answer = PresenceCodeAccepted(expires_in=int(PRESENCE_CODE_TTL.total_seconds()))
    sent = False
    if cid is not None:
        row = await access_repository.load_for_access(uow, ctx.principal, cid, visit=None, now=now)
        uow.principal_verified(row.principal_ok)
        customer = row.customer
        if customer is not None and customer.state == "active" and row.profile_key is not None:
            ciphers = runtime.vault.open_customer(cid, identity=None, profile=row.profile_key)
            await _queue_presence_code(
                uow, runtime, ctx, customer, ciphers.for_scope(KeyScope.PROFILE), now
            )
            sent = True
    uow.record(_event(ctx, resource=resource, customer_ids=asked, fields=CONTACT if sent else ()))
    return answer


async def _queue_presence_code(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer: Customer,
    profile: FieldCipher,
    now: datetime,
) -> None:
    code = presence.new_code()
    code_id, message_id = new_id(), new_id()
    await repository.add(
        uow.session,
        Message(
            id=message_id,
            customer_id=customer.id,
            kind=repository.KIND_PRESENCE_CODE,
            channel=Channel.SMS.value,
            template=PRESENCE_CODE_TEMPLATE,
            category=None,
            status=MessageStatus.QUEUED.value,
            urgent=False,
            consent_basis="service_relationship",
            body_enc=_seal(profile, message_id, "body", presence.sms_text(code)),
            created_at=now,
            created_by_id=ctx.principal.subject,
            created_by_role=ctx.principal.role.value,
            store_id=ctx.principal.store_id,
            due_at=now,
            attempts=0,
        ),
    )
    await repository.add(
        uow.session,
        PresenceCode(
            id=code_id,
            customer_id=customer.id,
            code_hash=presence.code_hash(
                runtime.keys.index, customer_id=customer.id, code_id=code_id, code=code
            ),
            created_at=now,
            expires_at=now + PRESENCE_CODE_TTL,
            requested_by_id=ctx.principal.subject,
            message_id=message_id,
        ),
    )
