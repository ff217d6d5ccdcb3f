"""The register of customers' requests (APPI): a store's manager registers a request (with the
customer at a visit, or on a reason — then it is reviewed), lists them, and closes each with its
outcome. An open request then justifies the manager's ``subject_request`` accesses that its kind
needs (``X-Subject-Request-Id``, checked by the access pipeline)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from app.access.context import AccessContext
from app.access.pipeline import open_customer, record_access
from app.audit.events import Action, EventDraft
from app.errors import Conflict, NotFound
from app.kit.ids import canonical_id, resource_of
from app.kit.pagination import Keyset, PageRequest, cut_page
from app.models import SubjectRequest
from app.models.base import new_id, utcnow
from app.policy import FieldGroup, SubjectRequestKind
from app.retention.service import today_in_japan
from app.roles import Role
from app.runtime import Runtime
from app.subject_requests import repository
from app.subject_requests.repository import RequestFilter
from app.subject_requests.schemas import (
    IdentityCheck,
    RequestChannel,
    RequestOutcome,
    SubjectRequestClose,
    SubjectRequestCreate,
    SubjectRequestList,
    SubjectRequestView,
)
from app.uow import UnitOfWork

NO_SUCH_REQUEST = "No such request at your store."


class RequestClosed(Conflict):
    slug, title = "request-closed", "Request closed"
    default_detail = "This request is closed already."


def view_of(request: SubjectRequest, store_code: str, today: date) -> SubjectRequestView:
    is_open = request.status == "open"
    return SubjectRequestView(
        id=request.id,
        customer_id=request.customer_id,
        store=store_code,
        kind=SubjectRequestKind(request.kind),
        channel=RequestChannel(request.channel),
        identity_check=IdentityCheck(request.identity_check),
        status=request.status,
        review_required=request.review_required,
        received_at=request.received_at,
        due_on=request.due_on,
        overdue=is_open and request.due_on < today,
        closed_at=request.closed_at,
        outcome=RequestOutcome(request.outcome) if request.outcome else None,
    )


async def register_request(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str,
    body: SubjectRequestCreate,
    *,
    now: datetime | None = None,
) -> SubjectRequestView:
    opened = await open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.CREATE,
        resource=resource_of("customers", customer_id, "/subject-requests"),
        scopes=frozenset(),  # nothing is decrypted
    )
    now = now or utcnow()
    today = today_in_japan(now)
    assert ctx.principal.store_id is not None  # managers belong to a store
    request = SubjectRequest(
        id=new_id(),
        customer_id=opened.id,
        store_id=ctx.principal.store_id,
        kind=body.kind.value,
        channel=body.channel.value,
        identity_check=body.identity_check.value,
        status="open",
        review_required=opened.justified.review_required,
        visit_id=opened.justified.visit_id,
        received_at=now,
        received_by=ctx.principal.subject,
        due_on=today + timedelta(days=runtime.settings.subject_request_due_days),
    )
    await repository.add(uow.session, request)
    record_access(
        uow,
        ctx,
        opened,
        action=Action.CREATE,
        resource=f"subject-requests/{request.id}",
        fields=frozenset[FieldGroup](),
    )
    assert ctx.principal.store_code is not None
    return view_of(request, ctx.principal.store_code, today)


async def list_requests(
    uow: UnitOfWork,
    ctx: AccessContext,
    *,
    open_only: bool | None,
    overdue: bool,
    page: PageRequest,
    now: datetime | None = None,
) -> SubjectRequestList:
    """A manager sees their store's requests; an auditor every store's."""
    await uow.verify_principal()
    today = today_in_japan(now)
    where = RequestFilter(
        store_id=ctx.principal.store_id if ctx.principal.role is Role.MANAGER else None,
        open=open_only,
        overdue_on=today if overdue else None,
    )
    rows = await repository.listed(uow.session, where, page)
    shown, next_cursor = cut_page(rows, page, lambda r: Keyset(r[0].received_at, r[0].id))
    uow.record(
        EventDraft(
            actor=ctx.actor,
            action=Action.READ,
            resource="subject-requests",
            purpose=ctx.purpose.value,
            reason=ctx.reason,
            customer_ids=tuple(dict.fromkeys(r.customer_id for r, _ in shown)),
            result_count=len(shown),
        )
    )
    return SubjectRequestList(
        items=[view_of(r, code, today) for r, code in shown], next=next_cursor
    )


async def close_request(
    uow: UnitOfWork,
    ctx: AccessContext,
    request_id: str,
    body: SubjectRequestClose,
    *,
    now: datetime | None = None,
) -> SubjectRequestView:
    await uow.verify_principal()
    rid = canonical_id(request_id)
    found = await repository.in_store(uow.session, rid, ctx.principal.store_id) if rid else None
    if found is None:
        raise NotFound(NO_SUCH_REQUEST)
    request, store_code = found
    if request.status != "open":
        raise RequestClosed()
    now = now or utcnow()
    request.status = "closed"
    request.closed_at = now
    request.closed_by = ctx.principal.subject
    request.outcome = body.outcome.value
    await repository.flush(uow.session)
    uow.record(
        EventDraft(
            actor=ctx.actor,
            action=Action.UPDATE,
            resource=f"subject-requests/{request.id}",
            purpose=ctx.purpose.value,
            reason=ctx.reason,
            customer_ids=(request.customer_id,),
            changed_fields=("outcome", "status"),
            subject_request_id=request.id,
        )
    )
    return view_of(request, store_code, today_in_japan(now))
