"""Telling the compliance mailbox (``SHOPVAULT_ALERT_EMAIL``) of each alert that opens.

The worker sends one email per alert from the official sender: the rule, the store, the role,
the count and the path of the alert in the API — never customer data, never an employee's name
or login. An alert is marked as told only once its email was handed over, so a worker that dies
in between tells it again (at most twice, never not at all); several workers skip each other's
alerts (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one writer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.messages.delivery import MailBackend, OutgoingEmail
from app.models import Alert

log = logging.getLogger(__name__)

RULE_TITLES = {
    "bulk_read": "短時間に多数の顧客情報の閲覧",
    "off_hours": "営業時間外のアクセス",
    "denied_burst": "拒否されたアクセスの集中",
    "search_misses": "該当なし検索の繰り返し",
    "review_pending": "確認待ちの閲覧",
    "presence_failures": "本人確認（来店確認）の失敗",
    "privileged_change": "権限に関わる変更",
}


def alert_email(alert: Alert, to: str) -> OutgoingEmail:
    title = RULE_TITLES.get(alert.rule, alert.rule)
    lines = [
        "shopvault でアラートが発生しました。",
        "",
        f"ルール: {alert.rule}（{title}）",
        f"店舗: {alert.store or '-'}",
        f"ロール: {alert.role or '-'}",
        f"件数: {alert.count}",
        f"最初: {alert.first_at.isoformat()}",
        "",
        f"確認: GET /alerts（id: {alert.id}）",
        f"パス: /alerts/{alert.id}",
    ]
    return OutgoingEmail(
        message_id=f"alert-{alert.id}",
        to=to,
        subject=f"[shopvault] アラート: {alert.rule}",
        body="\n".join(lines) + "\n",
        date=alert.first_at,
    )


async def unnotified(session: AsyncSession, limit: int) -> Sequence[Alert]:
    statement = (
        select(Alert)
        .where(Alert.notified_at.is_(None))
        .order_by(Alert.first_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.execute(statement)).scalars().all()


async def notify_alerts(
    sessions: object, mail: MailBackend, to: str, now: datetime, *, batch: int = 20
) -> int:
    """Email every alert not told yet; the number told."""

    assert isinstance(sessions, async_sessionmaker)
    told = 0
    async with sessions() as session, session.begin():
        for alert in await unnotified(session, batch):
            await mail.send(alert_email(alert, to))
            await session.execute(update(Alert).where(Alert.id == alert.id).values(notified_at=now))
            told += 1
    return told
