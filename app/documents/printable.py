"""The printable register: the list a manager takes to the cabinet (``text/html``).

Only what finding and ticking off the paper needs — where it is, what it is, its dates, the
customer's id, a box to tick — under Japanese headings; never personal data."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from html import escape

from app.documents.rules import FORM_TYPE_LABELS, FormStatus
from app.documents.schemas import FormView
from app.retention.service import date_in_japan

HTML_MEDIA_TYPE = "text/html"
JSON_MEDIA_TYPE = "application/json"

STATUS_LABELS: dict[FormStatus, str] = {
    FormStatus.KEPT: "保管中",
    FormStatus.DUE: "廃棄対象",
    FormStatus.DISPOSED: "廃棄済",
}
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #333; padding: 0.3em 0.5em; text-align: left; font-size: 10.5pt; }
td.tick { width: 2.5em; text-align: center; font-size: 16pt; }
.id { font-family: monospace; font-size: 9pt; }
@media print { .screen-only { display: none; } }
"""


def _quality(accept: str, media_type: str) -> float:
    """The quality the ``Accept`` header gives ``media_type``: the most specific range wins."""
    main, _, sub = media_type.partition("/")
    specificity, quality = -1, 0.0
    for entry in accept.split(","):
        media_range, *parameters = (part.strip() for part in entry.split(";"))
        range_main, _, range_sub = media_range.lower().partition("/")
        if (range_main, range_sub) == (main, sub):
            rank = 2
        elif range_main == main and range_sub == "*":
            rank = 1
        elif (range_main, range_sub) == ("*", "*"):
            rank = 0
        else:
            continue
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also NaN
                    q = 0.0
        if rank > specificity:
            specificity, quality = rank, q
    return quality


def prefers_html(accept: str | None) -> bool:
    """Whether the caller prefers HTML to JSON (a browser does; ``*/*`` and API clients get
    JSON)."""
    if not accept:
        return False
    html = _quality(accept, HTML_MEDIA_TYPE)
    return html > 0.0 and html > _quality(accept, JSON_MEDIA_TYPE)


def _row(form: FormView) -> str:
    cells = [
        '<td class="tick">☐</td>',
        f"<td>{escape(form.store)}</td>",
        f"<td>{escape(form.storage_location)}</td>",
        f"<td>{escape(FORM_TYPE_LABELS[form.form_type])}</td>",
        f"<td>{date_in_japan(form.registered_at).isoformat()}</td>",
        f"<td>{form.retain_until.isoformat() if form.retain_until else '契約・同意の継続中'}</td>",
        f"<td>{escape(STATUS_LABELS[form.status])}</td>",
        f'<td class="id">{escape(form.customer_id)}</td>',
        f'<td class="id">{escape(form.id)}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def render_register(
    forms: Sequence[FormView],
    *,
    due_only: bool,
    store: str | None,
    printed_on: date,
    next_href: str | None,
) -> str:
    title = "廃棄対象書類一覧（保存期間満了）" if due_only else "紙書類台帳"
    headings = "".join(
        f"<th>{h}</th>"
        for h in (
            "済",
            "店舗",
            "保管場所",
            "書類の種類",
            "受付日",
            "保存期限",
            "状態",
            "顧客ID",
            "書類ID",
        )
    )
    body = "".join(_row(form) for form in forms) or '<tr><td colspan="9">該当なし</td></tr>'
    more = (
        f'<p class="screen-only">続きがあります: <a href="{escape(next_href)}">次のページ</a></p>'
        if next_href
        else ""
    )
    summary = (
        f"店舗: {escape(store) if store else '全店舗'}　"
        f"作成日: {printed_on.isoformat()}　件数: {len(forms)}"
    )
    return f"""<!DOCTYPE html>
<html lang="ja">
<head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<table>
<thead><tr>{headings}</tr></thead>
<tbody>{body}</tbody>
</table>
{more}
<p>廃棄後は書類IDごとに廃棄方法（シュレッダー: shredded／溶解: dissolved）を記録してください。</p>
<p>確認者署名：＿＿＿＿＿＿＿＿　日付：＿＿＿＿＿＿</p>
</body>
</html>
"""
