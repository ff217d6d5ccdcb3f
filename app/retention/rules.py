"""Retention rules, as data: how long each kind of record is kept, counted from what, and why.

The one table of the service's retention periods; ``/docs`` renders it (``render_markdown``).
Paper forms, customers, visit notes, messages and access events each have their rules here;
``shopvault purge`` applies them (``app/retention/purge.py``). A rule gives the *last day* a
record is kept ("retain until", a date in Asia/Tokyo); from the day after, it is due for
disposal. ``None`` means "kept while its basis lasts" (an active contract, a granted consent):
the date is set when the basis ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from app.documents.rules import FormType


class Basis(StrEnum):
    """What a retention period is counted from."""

    # The customer's last contract ended; kept while any contract is active; counted from the
    # visit when the customer has no contract (or the visit came after the last one ended).
    LAST_CONTRACT_END = "last_contract_end"
    # The customer's marketing consent ended; kept while a consent (email or SMS) is granted;
    # counted from the visit when no consent was ever withdrawn after it.
    CONSENT_END = "consent_end"
    # The visit at which the record was made (visit notes: the visit's end).
    VISIT = "visit"
    # The record itself: when it was made (a message, an access event).
    MADE = "made"


BASIS_WORDING: Mapping[Basis, str] = {
    Basis.LAST_CONTRACT_END: "after the customer's last contract ended (kept while a contract "
    "is active; after the visit when there is none)",
    Basis.CONSENT_END: "after the marketing consent ended (kept while a consent is granted)",
    Basis.VISIT: "after the visit",
    Basis.MADE: "after it was made",
}


@dataclass(frozen=True, slots=True)
class RetentionRule:
    key: str  # stored with what it was applied to (e.g. ``paper_form.retention_rule``)
    record: str  # what the rule applies to, as /docs shows it
    years: int
    counted_from: Basis
    source: str  # the legal or business source


FORM_RULES: Mapping[FormType, RetentionRule] = {
    # 携帯音声通信事業者による契約者等の本人確認等及び携帯音声通信役務の不正な利用の防止に
    # 関する法律 (携帯電話不正利用防止法) 第4条第2項: the identity-verification record
    # (本人確認記録) is kept for 3 years from the day the service contract ended.
    FormType.IDENTITY_COPY: RetentionRule(
        "form.identity_copy",
        "paper form: copy of an identity document",
        3,
        Basis.LAST_CONTRACT_END,
        "携帯電話不正利用防止法 第4条第2項 (本人確認記録: 契約終了の日から3年間保存)",
    ),
    # The application carries the identity-verification items of the same record (本人確認記録
    # の記録事項), so it follows the same law and period.
    FormType.APPLICATION: RetentionRule(
        "form.application",
        "paper form: application (申込書)",
        3,
        Basis.LAST_CONTRACT_END,
        "携帯電話不正利用防止法 第4条 (本人確認記録の記録事項を含む: 契約終了の日から3年間)",
    ),
    # Business rule: a repair order answers questions about the repair (warranty, complaints)
    # for a year after the customer brought the device in.
    FormType.REPAIR_ORDER: RetentionRule(
        "form.repair_order",
        "paper form: repair order (修理受付票)",
        1,
        Basis.VISIT,
        "shop rule (社内規程): warranty and complaint handling, 1 year after the visit",
    ),
    # 特定電子メールの送信の適正化等に関する法律 第3条第2項 and its ordinance (施行規則 第4条):
    # the record that the customer consented is kept while mail is sent under the consent and
    # for 1 month after it ends (1 year when an order under 第7条 was received); the shop keeps
    # the longer period in every case.
    FormType.CONSENT_FORM: RetentionRule(
        "form.consent_form",
        "paper form: marketing consent (同意書)",
        1,
        Basis.CONSENT_END,
        "特定電子メール法 第3条第2項・施行規則 第4条 (同意を証する記録; shop keeps 1 year)",
    ),
    # Business rule: anything else filled in at the counter is kept for a year.
    FormType.OTHER: RetentionRule(
        "form.other",
        "paper form: other",
        1,
        Basis.VISIT,
        "shop rule (社内規程): 1 year after the visit",
    ),
}

# 携帯電話不正利用防止法 第4条第2項: the identity-verification record (本人確認記録: name,
# address, birth date, the document and its number) is kept for 3 years from the day the
# contract ended. After an erasure it is all that is kept, and only for that long.
IDENTITY_RECORD_RULE = RetentionRule(
    "customer.identity_record",
    "customer: identity-verification record (kept after an erasure)",
    3,
    Basis.LAST_CONTRACT_END,
    "携帯電話不正利用防止法 第4条第2項 (本人確認記録: 契約終了の日から3年間保存)",
)
# A customer with no active contract: their personal data as long as the identity record must
# be kept, counted from their last contract's end — or from their last visit (or registration)
# when that is later or they never had a contract (shop rule: a customer still served is kept).
CUSTOMER_RULE = RetentionRule(
    "customer.personal_data",
    "customer: personal data (no active contract)",
    3,
    Basis.LAST_CONTRACT_END,
    "携帯電話不正利用防止法 第4条第2項 and shop rule (社内規程): 3 years after the last "
    "contract ended, or after the last visit",
)
# Business rule: notes and repair symptoms answer questions about the visit for a year.
VISIT_NOTES_RULE = RetentionRule(
    "visit.notes",
    "visit notes and repair symptoms (free text)",
    1,
    Basis.VISIT,
    "shop rule (社内規程): 1 year after the visit ended",
)
# Business rule: what was sent to the customer (and when) answers complaints for a year.
MESSAGE_RULE = RetentionRule(
    "message",
    "messages to customers (subject, body, delivery status)",
    1,
    Basis.MADE,
    "shop rule (社内規程): 1 year after the message was made",
)
# The access log answers customers' access reports and investigations for 5 years; pruned
# only by `shopvault purge` run as the database owner, leaving a signed anchor.
ACCESS_EVENT_RULE = RetentionRule(
    "access_event",
    "access events (the audit log)",
    5,
    Basis.MADE,
    "個人情報保護法 (APPI) accountability; shop rule (社内規程): 5 years",
)

# Every rule of the service, in the order /docs shows them.
RULES: tuple[RetentionRule, ...] = (
    *FORM_RULES.values(),
    CUSTOMER_RULE,
    IDENTITY_RECORD_RULE,
    VISIT_NOTES_RULE,
    MESSAGE_RULE,
    ACCESS_EVENT_RULE,
)


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """What the bases depend on, for one customer (dates in Asia/Tokyo)."""

    active_contract: bool
    last_contract_end: date | None
    consent_granted: bool
    last_consent_end: date | None


def add_years(day: date, years: int) -> date:
    """The same calendar day ``years`` later (29 February becomes 28 February)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def retain_until(rule: RetentionRule, *, made_on: date, facts: CustomerFacts) -> date | None:
    """The last day a record made on ``made_on`` is kept, or ``None`` while its basis lasts.

    The period never counts from before the record was made."""
    match rule.counted_from:
        case Basis.LAST_CONTRACT_END:
            if facts.active_contract:
                return None
            start = max(made_on, facts.last_contract_end or made_on)
        case Basis.CONSENT_END:
            if facts.consent_granted:
                return None
            start = max(made_on, facts.last_consent_end or made_on)
        case Basis.VISIT | Basis.MADE:
            start = made_on
    return add_years(start, rule.years)


def is_due(retain: date | None, today: date) -> bool:
    """Retention has ended: ``retain`` was the last day to keep the record."""
    return retain is not None and retain < today


def render_markdown() -> str:
    """The rules as the docs page shows them."""
    lines = [
        "| record | kept | source |",
        "| --- | --- | --- |",
    ]
    for rule in RULES:
        unit = "year" if rule.years == 1 else "years"
        kept = f"{rule.years} {unit} {BASIS_WORDING[rule.counted_from]}"
        lines.append(f"| {rule.record} (`{rule.key}`) | {kept} | {rule.source} |")
    return "\n".join(lines)
