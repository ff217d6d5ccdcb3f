"""The paper-form register: ``POST /visits/{id}/documents`` (store staff), ``GET /documents``
(a manager: own store; an auditor: any), ``POST /documents/{id}/dispose`` (the store's manager).
No purpose header: forms are the shop's own records."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app.access.deps import PrincipalFor
from app.auth.tokens import Principal
from app.documents import service
from app.documents.printable import HTML_MEDIA_TYPE, prefers_html, render_register
from app.documents.rules import FormStatus, FormType
from app.documents.schemas import FormCreate, FormDispose, FormList, FormView
from app.kit.pagination import PageDep
from app.policy import Operation
from app.problems import problem_responses
from app.uow import UnitOfWorkDep

router = APIRouter(tags=["documents"], responses=problem_responses(400, 401, 403))

FormRegistrar = Annotated[Principal, PrincipalFor(Operation.REGISTER_FORMS)]
RegisterReader = Annotated[Principal, PrincipalFor(Operation.READ_FORM_REGISTER)]
FormDisposer = Annotated[Principal, PrincipalFor(Operation.DISPOSE_FORMS)]

_PRINTABLE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The register as JSON, or as a printable page (`text/html`) when the "
        "`Accept` header prefers it.",
        "content": {HTML_MEDIA_TYPE: {"schema": {"type": "string"}}},
    }
}


@router.post(
    "/visits/{visit_id}/documents",
    status_code=201,
    response_model=FormView,
    responses=problem_responses(404, 409),
)
async def register_form(
    principal: FormRegistrar, visit_id: str, body: FormCreate, uow: UnitOfWorkDep
) -> FormView:
    """Register a paper form filled in at a visit of your store. The visit must have its
    customer attached (`409` otherwise): the form is theirs. `retain_until` comes from the
    retention rules (null: kept while its basis lasts). Recorded as an access event."""
    return await service.register_form(uow, principal, visit_id, body)


@router.get(
    "/documents",
    response_model=FormList,
    responses={**problem_responses(404), **_PRINTABLE},
)
async def read_register(
    principal: RegisterReader,
    request: Request,
    uow: UnitOfWorkDep,
    page: PageDep,
    store: Annotated[
        str | None, Query(max_length=16, description="A store code (an auditor's filter).")
    ] = None,
    status: FormStatus | None = None,
    form_type: FormType | None = None,
    due: Annotated[
        bool, Query(description="Only the forms due for disposal, oldest first.")
    ] = False,
) -> FormList | HTMLResponse:
    """The paper-form register, newest first: a manager sees their store's, an auditor any
    store's. `due=true`: the forms whose retention has ended and that are not disposed of,
    oldest first — the list a manager takes to the cabinet, printable when asked for as
    `text/html`. No personal data beyond the customer's id."""
    query = service.RegisterQuery(store=store, status=status, form_type=form_type, due=due)
    result = await service.read_register(uow, principal, query, page)
    if not prefers_html(request.headers.get("accept")):
        return result.forms
    next_href = None
    if result.forms.next:
        following = request.url.include_query_params(cursor=result.forms.next)
        next_href = f"{following.path}?{following.query}"
    return HTMLResponse(
        render_register(
            result.forms.items,
            due_only=due or status is FormStatus.DUE,
            store=result.store,
            printed_on=result.today,
            next_href=next_href,
        )
    )


@router.post(
    "/documents/{document_id}/dispose",
    response_model=FormView,
    responses=problem_responses(404, 409),
)
async def dispose_form(
    principal: FormDisposer, document_id: str, body: FormDispose, uow: UnitOfWorkDep
) -> FormView:
    """Record that a form of your store was disposed of (`shredded` or `dissolved`), by you,
    now. Once only (`409`). A form still in retention needs a `reason` (10–500 characters),
    which the access event records."""
    return await service.dispose_form(uow, principal, document_id, body)
