"""The paper-form register's queries: always scoped to a store, except the auditor's and the
operator's views of every store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.documents.rules import FormStatus, FormType
from app.kit.pagination import PageRequest, newest_first
from app.models import PaperForm, Staff, Store, Visit

_registrar = aliased(Staff)
_disposer = aliased(Staff)


@dataclass(frozen=True, slots=True)
class FormRow:
    form: PaperForm
    store_code: str
    registered_by: str | None  # logins
    disposed_by: str | None


@dataclass(frozen=True, slots=True)
class VisitFacts:
    id: str
    customer_id: str | None
    opened_at: datetime
    store_code: str


@dataclass(frozen=True, slots=True)
class RegisterFilter:
    store_id: str | None  # None: every store
    status: FormStatus | None
    form_type: FormType | None
    today: date


def _rows() -> Select[PaperForm, str, str, str]:
    return (
        select(PaperForm, Store.code, _registrar.login, _disposer.login)
        .join(Store, Store.id == PaperForm.store_id)
        .join(_registrar, _registrar.id == PaperForm.registered_by)
        .outerjoin(_disposer, _disposer.id == PaperForm.disposed_by)
    )


def _form_rows(result: Any) -> list[FormRow]:
    return [FormRow(form, code, by, disposer) for form, code, by, disposer in result.all()]


def status_clause(status: FormStatus, today: date) -> ColumnElement[bool]:
    """A form's status in SQL: disposed, due (retention ended), or kept."""
    if status is FormStatus.DISPOSED:
        return PaperForm.disposed_at.is_not(None)
    due = and_(PaperForm.retain_until.is_not(None), PaperForm.retain_until < today)
    if status is FormStatus.DUE:
        return and_(PaperForm.disposed_at.is_(None), due)
    return and_(
        PaperForm.disposed_at.is_(None),
        or_(PaperForm.retain_until.is_(None), PaperForm.retain_until >= today),
    )


async def visit_in_store(session: AsyncSession, visit_id: str, store_id: str) -> VisitFacts | None:
    statement = (
        select(Visit.id, Visit.customer_id, Visit.opened_at, Store.code)
        .join(Store, Store.id == Visit.store_id)
        .where(Visit.id == visit_id, Visit.store_id == store_id)
    )
    row = (await session.execute(statement)).one_or_none()
    return VisitFacts(*row) if row else None


async def store_id_of(session: AsyncSession, code: str) -> str | None:
    return (await session.execute(select(Store.id).where(Store.code == code))).scalar_one_or_none()


async def add(session: AsyncSession, form: PaperForm) -> None:
    session.add(form)
    await session.flush()


async def flush(session: AsyncSession) -> None:
    await session.flush()


async def in_store(
    session: AsyncSession, form_id: str, store_id: str, *, lock: bool = False
) -> FormRow | None:
    """The form, if it is kept at this store. ``lock`` holds its row until commit, so that two
    disposals see each other's result."""
    statement = _rows().where(PaperForm.id == form_id, PaperForm.store_id == store_id)
    if lock:
        statement = statement.with_for_update(of=PaperForm)
    rows = _form_rows(await session.execute(statement))
    return rows[0] if rows else None


async def by_id(session: AsyncSession, form_id: str) -> FormRow | None:
    rows = _form_rows(await session.execute(_rows().where(PaperForm.id == form_id)))
    return rows[0] if rows else None


def _oldest_first(
    statement: Select[PaperForm, str, str, str], page: PageRequest
) -> Select[PaperForm, str, str, str]:
    """``newest_first`` the other way round: the keyset of the previous page, then onwards."""
    at, id_ = PaperForm.registered_at, PaperForm.id
    statement = statement.order_by(at.asc(), id_.asc()).limit(page.limit + 1)
    if page.after is not None:
        statement = statement.where(
            or_(at > page.after.at, and_(at == page.after.at, id_ > page.after.id))
        )
    return statement


async def register(
    session: AsyncSession, where: RegisterFilter, page: PageRequest, *, oldest_first: bool
) -> Sequence[FormRow]:
    statement = _rows()
    if where.store_id is not None:
        statement = statement.where(PaperForm.store_id == where.store_id)
    if where.status is not None:
        statement = statement.where(status_clause(where.status, where.today))
    if where.form_type is not None:
        statement = statement.where(PaperForm.form_type == where.form_type.value)
    if oldest_first:
        statement = _oldest_first(statement, page)
    else:
        statement = newest_first(statement, PaperForm.registered_at, PaperForm.id, page)
    return _form_rows(await session.execute(statement))


async def due_everywhere(session: AsyncSession, today: date) -> Sequence[FormRow]:
    """Every store's forms due for disposal, by store, oldest first."""
    statement = (
        _rows()
        .where(status_clause(FormStatus.DUE, today))
        .order_by(Store.code, PaperForm.registered_at, PaperForm.id)
    )
    return _form_rows(await session.execute(statement))


async def store_names(session: AsyncSession) -> Sequence[tuple[str, str]]:
    return [
        (code, name)
        for code, name in (
            await session.execute(select(Store.code, Store.name).order_by(Store.code))
        ).all()
    ]
