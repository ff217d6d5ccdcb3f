"""The export as a printable page in Japanese, to hand to the customer."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.audit.report import FIELD_LABELS, OUTCOME_LABELS, PURPOSE_LABELS, ROLE_LABELS, TOKYO
from app.documents.rules import FORM_TYPE_LABELS, FormType
from app.rights.schemas import CustomerExport

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "あり" if value else "なし"
    if isinstance(value, datetime):
        return value.astimezone(TOKYO).strftime("%Y年%m月%d日 %H:%M")
    if isinstance(value, date):
        return value.strftime("%Y年%m月%d日")
    return str(value)


def _profile(export: CustomerExport) -> list[tuple[str, str]]:
    c = export.customer
    document = c.identity_document
    rows = [
        ("お客様番号", c.id),
        ("氏名", c.name),
        ("フリガナ", c.name_kana),
        ("生年月日", c.date_of_birth),
        ("郵便番号", c.postal_code),
        ("住所", c.address),
        ("電話番号", c.phone),
        ("メールアドレス", c.email),
        ("本人確認書類", document.type.value if document else None),
        ("本人確認書類の番号", c.document_number),
        ("本人確認の日時", document.verified_at if document else None),
        ("本人確認の店舗", document.verified_store if document else None),
    ]
    return [(label, _text(value)) for label, value in rows]


def render_export(export: CustomerExport) -> str:
    """Every value shown is from the export; the template escapes it."""
    sections: list[dict[str, Any]] = [
        {
            "heading": "ご契約",
            "columns": ["電話番号", "料金プラン", "状態", "開始日", "終了日", "端末", "IMEI"],
            "rows": [
                [
                    c.line_number,
                    c.plan,
                    c.status,
                    c.started_on,
                    c.ended_on,
                    c.device.model,
                    c.device.imei,
                ]
                for c in export.contracts
            ],
        },
        {
            "heading": "ご来店の記録",
            "columns": ["日時", "店舗", "種別", "終了", "メモ"],
            "rows": [[v.opened_at, v.store, v.type, v.closed_at, v.notes] for v in export.visits],
        },
        {
            "heading": "修理",
            "columns": ["端末", "症状", "状況", "更新日時"],
            "rows": [[r.device_model, r.symptom, r.status, r.updated_at] for r in export.repairs],
        },
        {
            "heading": "お預かりしている書類",
            "columns": ["書類", "店舗", "受付日時", "保管期限", "廃棄日時"],
            "rows": [
                [
                    FORM_TYPE_LABELS.get(FormType(d.form_type), d.form_type),
                    d.store,
                    d.registered_at,
                    d.retain_until,
                    d.disposed_at,
                ]
                for d in export.documents
            ],
        },
        {
            "heading": "広告配信への同意の履歴",
            "columns": ["日時", "経路", "同意", "店舗", "方法"],
            "rows": [
                [h.at, "メール" if h.channel == "email" else "SMS", h.granted, h.store, h.method]
                for h in export.consents.history
            ],
        },
        {
            "heading": "お送りしたメッセージ",
            "columns": ["日時", "経路", "状態", "件名", "本文"],
            "rows": [
                [m.created_at, m.channel, m.status, m.subject, m.body] for m in export.messages
            ],
        },
        {
            "heading": "アクセス記録",
            "columns": ["日時", "店舗", "担当区分", "利用目的", "対象の項目", "結果"],
            "rows": [
                [
                    i.at,
                    i.store or "本部",
                    ROLE_LABELS.get(i.role or "", i.role),
                    PURPOSE_LABELS.get(i.purpose or "", i.purpose),
                    "、".join(FIELD_LABELS.get(f, f) for f in i.fields) or None,
                    OUTCOME_LABELS[i.outcome],
                ]
                for i in export.access_report
            ],
        },
    ]
    for section in sections:
        section["rows"] = [[_text(cell) for cell in row] for row in section["rows"]]
    return _templates.get_template("export.html").render(
        generated_at=_text(export.generated_at),
        schema_version=export.schema_version,
        profile=_profile(export),
        sections=sections,
    )
