"""The paper-form register: forms filled in at a visit, registered by the store's staff, kept
for as long as the retention rules say, and disposed of by the store's manager.

Forms are the shop's own records (no purpose header), scoped to the caller's store; a form
belongs to a customer, so registering and disposing are access events naming the customer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from app.audit.events import Action, EventDraft, denied_event
from app.auth.tokens import Principal
from app.documents import repository
from app.documents.repository import FormRow, RegisterFilter
from app.documents.rules import DisposalMethod, FormStatus, FormType
from app.documents.schemas import FormCreate, FormDispose, FormList, FormView
from app.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.kit.ids import canonical_id
from app.kit.pagination import Keyset, PageRequest, cut_page
from app.models import PaperForm
from app.models.base import new_id, utcnow
from app.retention import service as retention
from app.retention.rules import is_due
from app.roles import Role
from app.uow import UnitOfWork

NO_SUCH_FORM = "No such form at your store."


class FormAlreadyDisposed(Conflict):
    slug, title = "already-disposed", "Already disposed of"
    default_detail = "This form was disposed of already."


class RetentionNotEnded(Conflict):
    slug, title = "retention-not-ended", "Still in retention"
    default_detail = (
        "This form is still in its retention period: disposing of it early needs a reason."
    )


def status_of(form: PaperForm, today: date) -> FormStatus:
    if form.disposed_at is not None:
        return FormStatus.DISPOSED
    return FormStatus.DUE if is_due(form.retain_until, today) else FormStatus.KEPT


def _view(row: FormRow, today: date) -> FormView:
    form = row.form
    return FormView(
        id=form.id,
        store=row.store_code,
        visit_id=form.visit_id,
        customer_id=form.customer_id,
        form_type=FormType(form.form_type),
        storage_location=form.storage_location,
        status=status_of(form, today),
        registered_at=form.registered_at,
        registered_by=row.registered_by,
        retain_until=form.retain_until,
        retention_rule=form.retention_rule,
        disposed_at=form.disposed_at,
        disposed_by=row.disposed_by,
        disposal_method=DisposalMethod(form.disposal_method) if form.disposal_method else None,
    )


def _store_of(principal: Principal) -> str:
    # Admitted by the route for store staff only, who belong to exactly one store.
    assert principal.store_id is not None
    return principal.store_id


async def register_form(
    uow: UnitOfWork,
    principal: Principal,
    visit_id: str,
    body: FormCreate,
    *,
    now: datetime | None = None,
) -> FormView:
    store_id = _store_of(principal)
    await uow.verify_principal()
    vid = canonical_id(visit_id)
    visit = await repository.visit_in_store(uow.session, vid, store_id) if vid else None
    if visit is None:
        raise NotFound("No such visit at your store.")
    if visit.customer_id is None:
        raise Conflict("A form belongs to the visit's customer: attach the customer first.")
    now = now or utcnow()
    facts = await retention.customer_facts(uow, visit.customer_id)
    rule, retain_until = retention.form_retention(body.form_type, visit.opened_at, facts)
    form = PaperForm(
        id=new_id(),
        store_id=store_id,
        visit_id=visit.id,
        customer_id=visit.customer_id,
        form_type=body.form_type.value,
        storage_location=body.storage_location,
        registered_by=principal.subject,
        registered_at=now,
        retain_until=retain_until,
        retention_rule=rule.key,
    )
    await repository.add(uow.session, form)
    uow.record(
        EventDraft(
            actor=principal.actor,
            action=Action.CREATE,
            resource=f"documents/{form.id}",
            customer_ids=(visit.customer_id,),
        )
    )
    row = FormRow(form, visit.store_code, principal.login, None)
    return _view(row, retention.today_in_japan(now))


async def dispose_form(
    uow: UnitOfWork,
    principal: Principal,
    form_id: str,
    body: FormDispose,
    *,
    now: datetime | None = None,
) -> FormView:
    store_id = _store_of(principal)
    await uow.verify_principal()
    fid = canonical_id(form_id)
    row = await repository.in_store(uow.session, fid, store_id, lock=True) if fid else None
    if row is None:
        raise NotFound(NO_SUCH_FORM)
    form = row.form
    if form.disposed_at is not None:
        raise FormAlreadyDisposed()
    now = now or utcnow()
    today = retention.today_in_japan(now)
    if not is_due(form.retain_until, today) and body.reason is None:
        raise RetentionNotEnded()
    form.disposed_at = now
    form.disposed_by = principal.subject
    form.disposal_method = body.method.value
    await repository.flush(uow.session)
    uow.record(
        EventDraft(
            actor=principal.actor,
            action=Action.DISPOSE,
            resource=f"documents/{form.id}",
            reason=body.reason,
            customer_ids=(form.customer_id,),
        )
    )
    return _view(FormRow(form, row.store_code, row.registered_by, principal.login), today)


@dataclass(frozen=True, slots=True)
class RegisterQuery:
    store: str | None  # a store code
    status: FormStatus | None
    form_type: FormType | None
    due: bool  # the forms due for disposal, oldest first


@dataclass(frozen=True, slots=True)
class RegisterPage:
    forms: FormList
    store: str | None  # the store code listed, None for every store
    today: date


async def _store_filter(uow: UnitOfWork, principal: Principal, code: str | None) -> str | None:
    """The store whose register the caller reads: a manager only their own (another store is a
    recorded ``403``), an auditor the one asked for, or every store."""
    if principal.role is Role.MANAGER:
        if code is not None and code != principal.store_code:
            raise Forbidden(
                "Managers read the register of their own store only.",
                audit_event=denied_event(principal.actor, Action.READ, "documents", "forbidden"),
            )
        return _store_of(principal)
    if code is None:
        return None
    store_id = await repository.store_id_of(uow.session, code)
    if store_id is None:
        raise NotFound("No such store.")
    return store_id


async def read_register(
    uow: UnitOfWork,
    principal: Principal,
    query: RegisterQuery,
    page: PageRequest,
    *,
    now: datetime | None = None,
) -> RegisterPage:
    if query.due and query.status not in (None, FormStatus.DUE):
        raise ValidationFailed("due=true lists the forms due; leave out status or send due.")
    await uow.verify_principal()
    store_id = await _store_filter(uow, principal, query.store)
    today = retention.today_in_japan(now)
    where = RegisterFilter(
        store_id=store_id,
        status=FormStatus.DUE if query.due else query.status,
        form_type=query.form_type,
        today=today,
    )
    rows = await repository.register(uow.session, where, page, oldest_first=query.due)
    shown, next_cursor = cut_page(rows, page, lambda r: Keyset(r.form.registered_at, r.form.id))
    store = principal.store_code if principal.role is Role.MANAGER else query.store
    return RegisterPage(
        FormList(items=[_view(r, today) for r in shown], next=next_cursor), store, today
    )


@dataclass(frozen=True, slots=True)
class StoreDue:
    code: str
    name: str
    forms: Sequence[FormView]


async def due_by_store(
    uow: UnitOfWork, *, now: datetime | None = None
) -> tuple[date, list[StoreDue]]:
    """Every store's forms due for disposal, oldest first (``shopvault purge --dry-run``)."""
    today = retention.today_in_japan(now)
    due: dict[str, list[FormView]] = {}
    for row in await repository.due_everywhere(uow.session, today):
        due.setdefault(row.store_code, []).append(_view(row, today))
    stores = await repository.store_names(uow.session)
    return today, [StoreDue(code, name, due.get(code, [])) for code, name in stores]
