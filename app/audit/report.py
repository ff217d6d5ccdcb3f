"""The customer's access report (APPI): every access to their data — when, which store, which
role, why, which field groups, allowed or not — and never who by name or login.

JSON for systems, and a printable HTML page (Japanese headings, the issuing shop, the period)
that a shop can hand to the customer.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.access import pipeline
from app.access.context import AccessContext
from app.audit import auditor_repository as repository
from app.audit.events import Action, EventDraft
from app.audit.schemas import AccessReport, AccessReportItem, ReportStore
from app.kit.ids import resource_of
from app.models import AccessEvent
from app.models.base import utcnow
from app.runtime import Runtime
from app.uow import UnitOfWork

TOKYO = ZoneInfo("Asia/Tokyo")

ROLE_LABELS = {
    "sales": "販売員",
    "technician": "技術担当者",
    "manager": "店長・責任者",
    "auditor": "監査担当",
    "admin": "システム管理者",
    "billing_system": "料金請求システム",
    "fraud_system": "不正利用検知システム",
}
PURPOSE_LABELS = {
    "contract": "契約手続き",
    "identity_verification": "本人確認",
    "billing": "料金請求・お支払い",
    "repair": "故障修理受付・サービス提供",
    "support": "問い合わせ対応",
    "fraud_prevention": "不正利用防止",
    "subject_request": "お客様からのご請求への対応",
    "audit": "アクセスの調査（監査）",
}
FIELD_LABELS = {
    "name": "氏名",
    "contact": "連絡先",
    "address": "住所",
    "birth_date": "生年月日",
    "identity_document": "本人確認書類",
    "document_number": "本人確認書類の番号",
    "contracts": "契約",
    "device": "端末",
    "billing": "お支払い情報",
    "consents": "同意",
    "visits": "来店記録",
    "repairs": "修理",
}
OUTCOME_LABELS = {"allowed": "許可", "denied": "拒否"}

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


async def authorize_report(
    uow: UnitOfWork, runtime: Runtime, ctx: AccessContext, customer_id: str
) -> pipeline.OpenedCustomer:
    """The customer access check for the report: a `subject_request` access to this customer
    (a manager's, with a visit, a reason or a customer request), refused like any other — the
    one call into the customer access pipeline."""
    return await pipeline.open_customer(
        uow,
        runtime,
        ctx,
        customer_id,
        action=Action.READ,
        resource=resource_of("customers", customer_id, "/access-report"),
        scopes=frozenset(),  # the report decrypts nothing
    )


def _item(event: AccessEvent) -> AccessReportItem:
    return AccessReportItem(
        at=event.at,
        store=event.store,
        role=event.role,
        purpose=event.purpose,
        fields=list(event.fields),
        outcome=event.outcome,
    )


async def access_report(
    uow: UnitOfWork,
    runtime: Runtime,
    ctx: AccessContext,
    customer_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
) -> AccessReport:
    opened = await authorize_report(uow, runtime, ctx, customer_id)
    customer = opened.id
    report = await build_report(uow, customer, ctx.principal.store_id, since=since, until=until)
    uow.record(
        EventDraft(
            actor=ctx.actor,
            action=Action.READ,
            resource=f"customers/{customer}/access-report",
            purpose=ctx.purpose.value,
            reason=ctx.reason,
            customer_ids=(customer,),
            review_required=opened.justified.review_required,
            subject_request_id=opened.justified.subject_request_id,
        )
    )
    return report


async def build_report(
    uow: UnitOfWork,
    customer: str,
    store_id: str | None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AccessReport:
    """The report's content (the caller is checked already), issued by ``store_id``'s shop."""
    events = await repository.customer_access(uow.session, customer, since=since, until=until)
    store = await repository.store_by_id(uow.session, store_id)
    return AccessReport(
        customer_id=customer,
        store=ReportStore(code=store.code, name=store.name) if store else None,
        period_from=since,
        period_to=until,
        generated_at=utcnow(),
        items=[_item(event) for event in events],
    )


def _local(at: datetime) -> str:
    return at.astimezone(TOKYO).strftime("%Y年%m月%d日 %H:%M")


def _date(at: datetime) -> str:
    return at.astimezone(TOKYO).strftime("%Y年%m月%d日")


def render_html(report: AccessReport, store_names: dict[str, str]) -> str:
    """The printable page. Every value shown is from the report; the template escapes it."""
    if report.period_from is None and report.period_to is None:
        period = "記録の開始から作成日時まで"
    else:
        start = _date(report.period_from) if report.period_from else "記録の開始"
        end = _date(report.period_to) if report.period_to else _date(report.generated_at)
        period = f"{start} 〜 {end}"
    items = [
        {
            "at": _local(item.at),
            "store": store_names.get(item.store, item.store) if item.store else "本部",
            "role": ROLE_LABELS.get(item.role or "", item.role or "—"),
            "purpose": PURPOSE_LABELS.get(item.purpose or "", item.purpose or "—"),
            "fields": "、".join(FIELD_LABELS.get(f, f) for f in item.fields) or "—",
            "outcome": OUTCOME_LABELS[item.outcome],
        }
        for item in report.items
    ]
    return _templates.get_template("access_report.html").render(
        shop_name=report.store.name if report.store else "本部",
        period=period,
        generated_at=_local(report.generated_at),
        items=items,
    )


async def store_names(uow: UnitOfWork) -> dict[str, str]:
    return {code: store.name for code, store in (await repository.stores(uow.session)).items()}
