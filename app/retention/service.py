"""Applying the retention rules: the date until which a record is kept, set when it is made
and recomputed when what it depends on changes (a contract opens or ends, a consent changes).

Days are counted in Asia/Tokyo, where the shops are."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from app.documents.rules import FormType
from app.models.base import utcnow
from app.retention import repository
from app.retention.rules import FORM_RULES, CustomerFacts, RetentionRule, retain_until
from app.uow import UnitOfWork

TOKYO = ZoneInfo("Asia/Tokyo")


def date_in_japan(moment: datetime) -> date:
    return moment.astimezone(TOKYO).date()


def today_in_japan(now: datetime | None = None) -> date:
    return date_in_japan(now or utcnow())


async def customer_facts(uow: UnitOfWork, customer_id: str) -> CustomerFacts:
    active, last_end = await repository.contract_summary(uow.session, customer_id)
    granted, withdrawn = await repository.consent_summary(uow.session, customer_id)
    return CustomerFacts(
        active_contract=active > 0,
        last_contract_end=last_end,
        consent_granted=granted,
        last_consent_end=date_in_japan(withdrawn) if withdrawn else None,
    )


def form_retention(
    form_type: FormType, visit_at: datetime, facts: CustomerFacts
) -> tuple[RetentionRule, date | None]:
    """The rule for a form of this type filled in at a visit at ``visit_at``, and its date."""
    rule = FORM_RULES[form_type]
    return rule, retain_until(rule, made_on=date_in_japan(visit_at), facts=facts)


async def recompute_form_retention(uow: UnitOfWork, customer_id: str) -> None:
    """Recompute ``retain_until`` of the customer's forms still kept, after a change to their
    contracts or consents (disposed forms keep the date they had)."""
    forms = await repository.kept_forms(uow.session, customer_id)
    if not forms:
        return
    facts = await customer_facts(uow, customer_id)
    for form, visit_at in forms:
        rule, until = form_retention(FormType(form.form_type), visit_at, facts)
        form.retention_rule = rule.key
        form.retain_until = until
    await repository.flush(uow.session)
