"""``/message-templates``, ``/customers/{id}/messages``, ``/messages/{id}`` and
``/customers/{id}/presence-code``: messages through official channels only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header

from app.access.context import AccessContext
from app.access.deps import AccessTo
from app.auth.deps import CurrentPrincipal
from app.kit import idempotency
from app.kit.deps import RuntimeDep
from app.kit.pagination import PageDep
from app.messages import service
from app.messages.schemas import (
    MessageAccepted,
    MessageCreate,
    MessageList,
    MessageView,
    PresenceCodeAccepted,
    TemplateList,
)
from app.models.base import utcnow
from app.policy import Operation
from app.problems import problem_responses
from app.uow import UnitOfWorkDep

router = APIRouter(tags=["messages"], responses=problem_responses(400, 401, 403))

SendMessage = Annotated[AccessContext, AccessTo(Operation.SEND_MESSAGE)]
ReadMessages = Annotated[AccessContext, AccessTo(Operation.READ_MESSAGES)]
RequestPresenceCode = Annotated[AccessContext, AccessTo(Operation.REQUEST_PRESENCE_CODE)]

Clock = Callable[[], datetime]


def clock() -> Clock:
    """What time it is for the message rules (quiet hours, the daily cap, visit windows);
    tests override this dependency to run at a time of their choosing."""
    return utcnow


ClockDep = Annotated[Clock, Depends(clock)]


async def required_idempotency_key(
    value: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Required. A retry with the same key and body gets the first answer "
            "and sends nothing; the same key with another body is `409`.",
        ),
    ] = None,
) -> str:
    # A dependency, so that a missing or malformed key is a 400 before the body is parsed.
    key = idempotency.parse_key(value)
    if key is None:
        raise service.IdempotencyKeyRequired()
    return key


@router.get("/message-templates", response_model=TemplateList)
async def list_templates(_principal: CurrentPrincipal) -> TemplateList:
    """The approved templates: every category has one for each channel. Only these are sent."""
    return service.list_templates()


@router.post(
    "/customers/{customer_id}/messages",
    status_code=202,
    response_model=MessageAccepted,
    responses=problem_responses(404, 409, 429),
)
async def send_message(
    ctx: SendMessage,
    customer_id: str,
    idempotency_key: Annotated[str, Depends(required_idempotency_key)],
    body: MessageCreate,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    now: ClockDep,
) -> MessageAccepted:
    """Send an approved template to the customer by `email` or `sms`, from the official sender.

    Who may send what: `sales` procedure_guidance, support, appointment (`X-Visit-Id` of a visit
    for this customer at your store, open or closed within 14 days); `technician` support,
    appointment (the same, a repair visit); `manager` all five categories (a visit, or
    `X-Access-Reason`); `billing_system` procedure_guidance (purpose `billing`). Marketing needs
    the customer's opt-in for the channel. Between 21:00 and 08:00 (Japan) a message is
    `scheduled` for 08:00 unless it is urgent (a manager's important_notice with a reason).
    You never see the address or number it goes to."""
    return await service.send_message(
        uow, runtime, ctx, customer_id, body, idempotency_key=idempotency_key, now=now()
    )


@router.get(
    "/customers/{customer_id}/messages",
    response_model=MessageList,
    responses=problem_responses(404),
)
async def list_messages(
    ctx: ReadMessages, customer_id: str, runtime: RuntimeDep, uow: UnitOfWorkDep, page: PageDep
) -> MessageList:
    """The customer's messages and their delivery status, newest first (the purpose rules of a
    read of the customer)."""
    return await service.list_messages(uow, runtime, ctx, customer_id, page)


@router.get("/messages/{message_id}", response_model=MessageView, responses=problem_responses(404))
async def get_message(
    ctx: ReadMessages, message_id: str, runtime: RuntimeDep, uow: UnitOfWorkDep
) -> MessageView:
    """One message's delivery status (`queued`, `scheduled`, `sent`, `failed`)."""
    return await service.get_message(uow, runtime, ctx, message_id)


@router.post(
    "/customers/{customer_id}/presence-code",
    status_code=202,
    response_model=PresenceCodeAccepted,
    responses=problem_responses(429),
)
async def request_presence_code(
    ctx: RequestPresenceCode,
    customer_id: str,
    runtime: RuntimeDep,
    uow: UnitOfWorkDep,
    now: ClockDep,
) -> PresenceCodeAccepted:
    """Send a one-time 6-digit code to the customer's registered phone (purpose `support`; no
    visit or reason), for a customer on the phone to prove it is them (`presence`
    `{"method": "sms_code", "code": …}`). Valid 5 minutes, once. The answer is the same whether
    or not the customer exists or has a phone; at most 3 per customer and 10 per caller an
    hour."""
    return await service.request_presence_code(uow, runtime, ctx, customer_id, now=now())
