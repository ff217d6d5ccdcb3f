"""Retention rules as data: each form type's period and basis, the date set when a form is
registered (days in Asia/Tokyo), recomputed when a contract opens or ends and when consents
change; the rules in /docs; and ``shopvault purge --dry-run``, which lists the forms due and
changes nothing (the purge itself: ``tests/test_purge.py``)."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.cli import main
from app.config import Settings
from app.documents.rules import FormType
from app.models import AccessEvent, ConsentEvent, PaperForm, Visit
from app.retention.rules import (
    FORM_RULES,
    RULES,
    Basis,
    CustomerFacts,
    RetentionRule,
    add_years,
    is_due,
    render_markdown,
    retain_until,
)
from app.retention.service import date_in_japan
from tests import cast
from tests.access_log import count_rows
from tests.test_cli import restore_logging  # noqa: F401  (main configures logging)
from tests.world import Registered, purpose, register_customer

Headers = dict[str, str]
AsMember = Callable[..., Headers]
# 2025-04-01 01:00 in Tokyo, still 2025-03-31 in UTC.
VISIT_AT = datetime(2025, 3, 31, 16, 0, tzinfo=UTC)
VISIT_ON = date(2025, 4, 1)
NO_BASIS = CustomerFacts(
    active_contract=False, last_contract_end=None, consent_granted=False, last_consent_end=None
)
CONTRACT = {
    "line_number": "080-2222-3333",
    "plan": "5G ギガプラン",
    "device": {"model": "Pixel 9", "imei": "353456789012345"},
    "billing": {"payment_method": "credit_card", "account_last4": "4242"},
}
EARLY = "原本をお客様に返却したため早期に廃棄します"


# --- the rules, as data -------------------------------------------------------------------------


def test_every_form_type_has_a_rule_with_its_source() -> None:
    assert set(FORM_RULES) == set(FormType)
    keys = [rule.key for rule in RULES]
    assert len(keys) == len(set(keys))
    for rule in RULES:
        assert rule.source.strip() and rule.record.strip() and rule.years > 0


def test_the_issues_defaults() -> None:
    expected = {
        FormType.IDENTITY_COPY: (3, Basis.LAST_CONTRACT_END),
        FormType.APPLICATION: (3, Basis.LAST_CONTRACT_END),
        FormType.REPAIR_ORDER: (1, Basis.VISIT),
        FormType.CONSENT_FORM: (1, Basis.CONSENT_END),
        FormType.OTHER: (1, Basis.VISIT),
    }
    assert {t: (r.years, r.counted_from) for t, r in FORM_RULES.items()} == expected
    assert "携帯電話不正利用防止法" in FORM_RULES[FormType.IDENTITY_COPY].source
    assert "特定電子メール法" in FORM_RULES[FormType.CONSENT_FORM].source


@pytest.mark.parametrize(
    ("day", "years", "expected"),
    [
        (date(2025, 4, 1), 1, date(2026, 4, 1)),
        (date(2024, 2, 29), 1, date(2025, 2, 28)),
        (date(2024, 2, 29), 4, date(2028, 2, 29)),
        (date(2025, 12, 31), 3, date(2028, 12, 31)),
    ],
)
def test_add_years(day: date, years: int, expected: date) -> None:
    assert add_years(day, years) == expected


def _rule(basis: Basis, years: int = 3) -> RetentionRule:
    return RetentionRule("test", "test", years, basis, "test")


@pytest.mark.parametrize(
    ("basis", "facts", "expected"),
    [
        (Basis.VISIT, NO_BASIS, date(2028, 4, 1)),
        (Basis.LAST_CONTRACT_END, NO_BASIS, date(2028, 4, 1)),
        (
            Basis.LAST_CONTRACT_END,
            CustomerFacts(True, date(2026, 1, 1), False, None),
            None,
        ),
        (
            Basis.LAST_CONTRACT_END,
            CustomerFacts(False, date(2026, 1, 31), False, None),
            date(2029, 1, 31),
        ),
        # A form made after the last contract ended is kept from the visit on.
        (
            Basis.LAST_CONTRACT_END,
            CustomerFacts(False, date(2020, 1, 31), False, None),
            date(2028, 4, 1),
        ),
        (Basis.CONSENT_END, CustomerFacts(False, None, True, date(2026, 5, 5)), None),
        (Basis.CONSENT_END, CustomerFacts(False, None, False, date(2026, 5, 5)), date(2029, 5, 5)),
        (Basis.CONSENT_END, CustomerFacts(False, None, False, date(2024, 5, 5)), date(2028, 4, 1)),
        (Basis.CONSENT_END, NO_BASIS, date(2028, 4, 1)),
        # A contract's basis does not keep a consent form, nor a consent an identity copy.
        (Basis.CONSENT_END, CustomerFacts(True, None, False, None), date(2028, 4, 1)),
        (Basis.LAST_CONTRACT_END, CustomerFacts(False, None, True, None), date(2028, 4, 1)),
        (Basis.VISIT, CustomerFacts(True, None, True, None), date(2028, 4, 1)),
    ],
)
def test_retain_until_by_basis(basis: Basis, facts: CustomerFacts, expected: date | None) -> None:
    assert retain_until(_rule(basis), made_on=VISIT_ON, facts=facts) == expected


@pytest.mark.parametrize(
    ("retain", "today", "due"),
    [
        (None, date(2999, 1, 1), False),
        (date(2026, 4, 1), date(2026, 3, 31), False),
        (date(2026, 4, 1), date(2026, 4, 1), False),  # the last day it is kept
        (date(2026, 4, 1), date(2026, 4, 2), True),
    ],
)
def test_a_record_is_due_the_day_after_its_retain_until(
    retain: date | None, today: date, due: bool
) -> None:
    assert is_due(retain, today) is due


def test_date_in_japan() -> None:
    assert date_in_japan(datetime(2025, 3, 31, 14, 59, tzinfo=UTC)) == date(2025, 3, 31)
    assert date_in_japan(datetime(2025, 3, 31, 15, 0, tzinfo=UTC)) == date(2025, 4, 1)


def test_the_rules_are_rendered_in_the_docs(client: TestClient) -> None:
    table = render_markdown()
    description = client.get("/openapi.json").json()["info"]["description"]
    assert "## Retention rules" in description
    assert table in description
    for rule in RULES:
        assert rule.key in table and rule.source in table
    assert client.get("/docs").status_code == 200


# --- the date set at registration ---------------------------------------------------------------


def _customer(
    client: TestClient, as_member: AsMember, db: Engine, seed: int, **overrides: Any
) -> Registered:
    """A customer registered at S001 by sales, in a (still open) visit on ``VISIT_ON``: the
    visit and the consents recorded at registration are moved there."""
    customer = register_customer(client, as_member(cast.SALES), seed=seed, **overrides)
    with db.begin() as connection:
        connection.execute(
            update(Visit).where(Visit.id == customer.visit_id).values(opened_at=VISIT_AT)
        )
        connection.execute(
            update(ConsentEvent).where(ConsentEvent.customer_id == customer.id).values(at=VISIT_AT)
        )
    return customer


def _form(client: TestClient, headers: Headers, visit_id: str, form_type: str) -> dict[str, Any]:
    response = client.post(
        f"/visits/{visit_id}/documents",
        json={"form_type": form_type, "storage_location": "cabinet-1"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    form: dict[str, Any] = response.json()
    return form


def _retain(db: Engine, form_id: str) -> date | None:
    with Session(db) as session:
        row = session.get(PaperForm, form_id)
        assert row is not None
        return row.retain_until


@pytest.mark.parametrize(
    ("form_type", "expected"),
    [
        ("identity_copy", "2028-04-01"),
        ("application", "2028-04-01"),
        ("repair_order", "2026-04-01"),
        ("consent_form", "2026-04-01"),
        ("other", "2026-04-01"),
    ],
)
def test_a_form_is_kept_by_its_types_rule_counted_in_tokyo(
    client: TestClient, as_member: AsMember, db: Engine, form_type: str, expected: str
) -> None:
    customer = _customer(client, as_member, db, seed=61)
    form = _form(client, as_member(cast.SALES), customer.visit_id, form_type)
    assert form["retain_until"] == expected
    assert form["retention_rule"] == f"form.{form_type}"
    assert _retain(db, form["id"]) == date.fromisoformat(expected)


def test_a_visit_late_in_the_tokyo_evening_counts_from_that_day(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    customer = register_customer(client, as_member(cast.SALES), seed=62)
    late = datetime(2025, 3, 31, 14, 59, tzinfo=UTC)  # 23:59 on 31 March in Tokyo
    with db.begin() as connection:
        connection.execute(
            update(Visit).where(Visit.id == customer.visit_id).values(opened_at=late)
        )
    form = _form(client, as_member(cast.SALES), customer.visit_id, "repair_order")
    assert form["retain_until"] == "2026-03-31"


def _contract(client: TestClient, headers: Headers, customer: Registered, **body: Any) -> str:
    response = client.post(
        f"/customers/{customer.id}/contracts",
        json={**CONTRACT, **body},
        headers=purpose(headers, "contract", visit=customer.visit_id),
    )
    assert response.status_code == 201, response.text
    contract_id: str = response.json()["id"]
    return contract_id


def _terminate(
    client: TestClient, headers: Headers, customer: Registered, contract: str, ended_on: str
) -> None:
    response = client.patch(
        f"/contracts/{contract}",
        json={"status": "terminated", "ended_on": ended_on},
        headers=purpose(headers, "contract", visit=customer.visit_id),
    )
    assert response.status_code == 200, response.text


def test_identity_records_are_kept_while_a_contract_lasts_and_3_years_after(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = _customer(client, as_member, db, seed=63)
    first = _contract(client, sales, customer, started_on="2025-01-10")
    copy = _form(client, sales, customer.visit_id, "identity_copy")
    application = _form(client, sales, customer.visit_id, "application")
    repair = _form(client, sales, customer.visit_id, "repair_order")
    early = _form(client, sales, customer.visit_id, "identity_copy")
    assert copy["retain_until"] is None and application["retain_until"] is None
    assert copy["status"] == "kept"
    assert repair["retain_until"] == "2026-04-01"
    disposed = client.post(
        f"/documents/{early['id']}/dispose",
        json={"method": "shredded", "reason": EARLY},
        headers=as_member(cast.MANAGER),
    )
    assert disposed.status_code == 200, disposed.text

    _terminate(client, sales, customer, first, "2025-06-30")
    assert _retain(db, copy["id"]) == date(2028, 6, 30)
    assert _retain(db, application["id"]) == date(2028, 6, 30)
    assert _retain(db, repair["id"]) == date(2026, 4, 1)
    assert _retain(db, early["id"]) is None  # disposed of: left as it was

    # A new contract: kept again while it lasts; and counted from the last end once it ends.
    second = _contract(client, sales, customer, started_on="2025-01-20")
    assert _retain(db, copy["id"]) is None
    _terminate(client, sales, customer, second, "2025-02-01")
    assert _retain(db, copy["id"]) == date(2028, 6, 30)
    listed = client.get("/documents", headers=as_member(cast.MANAGER)).json()["items"]
    assert {item["id"]: item["retain_until"] for item in listed}[copy["id"]] == "2028-06-30"


def test_a_form_whose_retention_already_ended_is_due_at_once(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = register_customer(client, sales, seed=64)
    contract = _contract(client, sales, customer, started_on="2019-01-10")
    _terminate(client, sales, customer, contract, "2020-01-15")
    with db.begin() as connection:
        connection.execute(
            update(Visit)
            .where(Visit.id == customer.visit_id)
            .values(opened_at=datetime(2020, 1, 10, 3, 0, tzinfo=UTC))
        )
    form = _form(client, sales, customer.visit_id, "identity_copy")
    assert form["retain_until"] == "2023-01-15"
    assert form["status"] == "due"
    due = client.get("/documents", params={"due": "true"}, headers=as_member(cast.MANAGER))
    assert [item["id"] for item in due.json()["items"]] == [form["id"]]


def _consents(client: TestClient, headers: Headers, customer: Registered, **consents: bool) -> None:
    response = client.patch(
        f"/customers/{customer.id}",
        json={"consents": consents},
        headers=purpose(headers, "contract", visit=customer.visit_id),
    )
    assert response.status_code == 200, response.text


def _last_withdrawal(db: Engine, customer_id: str) -> datetime:
    with Session(db) as session:
        at = session.scalar(
            select(ConsentEvent.at)
            .where(ConsentEvent.customer_id == customer_id, ConsentEvent.granted.is_(False))
            .order_by(ConsentEvent.at.desc())
            .limit(1)
        )
    assert at is not None
    return at


def test_a_consent_form_is_kept_while_a_consent_is_granted_and_a_year_after(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = _customer(
        client,
        as_member,
        db,
        seed=65,
        consents={"marketing_email": True, "marketing_sms": True},
    )
    consent = _form(client, sales, customer.visit_id, "consent_form")
    other = _form(client, sales, customer.visit_id, "other")
    assert consent["retain_until"] is None

    _consents(client, sales, customer, marketing_email=False)
    assert _retain(db, consent["id"]) is None  # SMS consent still granted

    _consents(client, sales, customer, marketing_sms=False)
    withdrawn = date_in_japan(_last_withdrawal(db, customer.id))
    assert _retain(db, consent["id"]) == add_years(withdrawn, 1)
    assert _retain(db, other["id"]) == date(2026, 4, 1)

    _consents(client, sales, customer, marketing_email=True)
    assert _retain(db, consent["id"]) is None


def test_a_correction_without_consents_leaves_retention_alone(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    sales = as_member(cast.SALES)
    customer = _customer(client, as_member, db, seed=66)
    consent = _form(client, sales, customer.visit_id, "consent_form")
    with db.begin() as connection:
        connection.execute(
            update(PaperForm).where(PaperForm.id == consent["id"]).values(retain_until=None)
        )
    response = client.patch(
        f"/customers/{customer.id}",
        json={"address": "東京都渋谷区神南1-1-1"},
        headers=purpose(sales, "contract", visit=customer.visit_id),
    )
    assert response.status_code == 200, response.text
    assert _retain(db, consent["id"]) is None


# --- shopvault purge --dry-run ------------------------------------------------------------------


def _run(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: Any, *args: str
) -> tuple[int, str, str]:
    with monkeypatch.context() as patch:
        for name in os.environ:
            if name.startswith("SHOPVAULT_"):
                patch.delenv(name)
        patch.setenv("SHOPVAULT_DATA_DIR", str(settings.data_dir))
        patch.setenv("SHOPVAULT_DATABASE_URL", settings.resolved_database_url)
        for name in ("jwt_key", "master_key", "index_key"):
            secret = getattr(settings, name)
            patch.setenv(f"SHOPVAULT_{name.upper()}", secret.get_secret_value())
        patch.setattr(sys, "stdin", io.StringIO(""))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
    return code, out, err


def _due_forms(client: TestClient, as_member: AsMember, db: Engine) -> dict[str, dict[str, Any]]:
    here = register_customer(client, as_member(cast.SALES), seed=67)
    there = register_customer(client, as_member(cast.SALES_OTHER_STORE), seed=68)
    forms = {
        "newer": _form(client, as_member(cast.SALES), here.visit_id, "repair_order"),
        "older": _form(client, as_member(cast.SALES), here.visit_id, "identity_copy"),
        "kept": _form(client, as_member(cast.SALES), here.visit_id, "other"),
        "there": _form(client, as_member(cast.SALES_OTHER_STORE), there.visit_id, "application"),
    }
    times = {
        "newer": datetime(2023, 6, 1, 1, 0, tzinfo=UTC),
        "older": datetime(2022, 6, 1, 1, 0, tzinfo=UTC),
        "kept": datetime(2021, 6, 1, 1, 0, tzinfo=UTC),
        "there": datetime(2023, 1, 1, 1, 0, tzinfo=UTC),
    }
    with db.begin() as connection:
        for name, form in forms.items():
            connection.execute(
                update(PaperForm)
                .where(PaperForm.id == form["id"])
                .values(
                    registered_at=times[name],
                    retain_until=None if name == "kept" else date(2024, 1, 1),
                )
            )
    return forms


def test_purge_dry_run_lists_the_forms_due_per_store_oldest_first(
    client: TestClient,
    as_member: AsMember,
    db: Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    forms = _due_forms(client, as_member, db)
    events_before = count_rows(db, AccessEvent)

    code, out, err = _run(settings, monkeypatch, capsys, "purge", "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert "dry run" in lines[0] and lines[-1] == "Dry run: nothing was changed."
    s001 = lines.index(next(line for line in lines if line.startswith("S001 ")))
    s002 = lines.index(next(line for line in lines if line.startswith("S002 ")))
    assert lines[s001] == "S001 渋谷店: 2 due"
    assert lines[s002] == "S002 新宿店: 1 due"
    s001_forms = lines[s001 + 1 : s002]
    assert [forms["older"]["id"] in s001_forms[0], forms["newer"]["id"] in s001_forms[1]] == [
        True,
        True,
    ]
    assert "registered 2022-06-01" in s001_forms[0] and "identity_copy" in s001_forms[0]
    assert forms["older"]["customer_id"] in s001_forms[0]
    assert forms["there"]["id"] in lines[s002 + 1]
    assert forms["kept"]["id"] not in out

    # Nothing changed: no form disposed of, nothing recorded.
    with Session(db) as session:
        assert (
            session.scalar(select(PaperForm.id).where(PaperForm.disposed_at.is_not(None))) is None
        )
    assert count_rows(db, AccessEvent) == events_before


def test_a_dry_run_with_nothing_due_says_so_per_store(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(settings, monkeypatch, capsys, "purge", "--dry-run")
    assert code == 0, err
    assert "S001 渋谷店: 0 due" in out.splitlines()
    assert "S002 新宿店: 0 due" in out.splitlines()


def test_due_is_counted_from_the_day_after_retain_until(
    client: TestClient, as_member: AsMember, db: Engine
) -> None:
    # Far from midnight either way, whatever the hour of the run: yesterday is due, tomorrow is
    # kept (the exact boundary is test_a_record_is_due_the_day_after_its_retain_until).
    customer = register_customer(client, as_member(cast.SALES), seed=69)
    today = date_in_japan(datetime.now(UTC))
    forms = [_form(client, as_member(cast.SALES), customer.visit_id, "other") for _ in range(2)]
    with db.begin() as connection:
        for form, offset in zip(forms, (-2, 2), strict=True):
            connection.execute(
                update(PaperForm)
                .where(PaperForm.id == form["id"])
                .values(retain_until=today + timedelta(days=offset))
            )
    listed = client.get("/documents", headers=as_member(cast.MANAGER)).json()["items"]
    status = {item["id"]: item["status"] for item in listed}
    assert [status[forms[0]["id"]], status[forms[1]["id"]]] == ["due", "kept"]
