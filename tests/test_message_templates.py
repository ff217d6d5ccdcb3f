"""The template catalog and rendering: only declared variables, typed, and nothing a variable
carries can become a link, a number to call or more wording (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.errors import ValidationFailed
from app.messages.catalog import CATALOG, CatalogError, parse_catalog
from app.messages.rendering import render
from app.messages.rules import (
    SMS_MAX_LENGTH,
    Category,
    Channel,
    end_of_quiet_hours,
    in_quiet_hours,
    sms_length,
)
from tests.messaging import TOKYO, VARIABLES

MARKETING = """
[marketing]
sender_identification = "送信者：テスト"
opt_out_email = "配信停止はこちらまで"
opt_out_sms = "配信停止は店頭へ"
"""


def _catalog_with(template: str) -> str:
    every_category = "".join(
        f"""
[[template]]
id = "t_{category}"
title = "t"
category = "{category}"
sms = "本文"
email_subject = "件名"
email_body = "本文"
"""
        for category in Category
    )
    return MARKETING + every_category + template


def test_the_shipped_catalog_has_every_category_on_both_channels() -> None:
    for category in Category:
        for channel in Channel:
            assert any(
                t.category is category and channel in t.channels for t in CATALOG.templates.values()
            )
    assert set(CATALOG.templates) == set(VARIABLES)


@pytest.mark.parametrize(
    "template",
    [
        # A wording uses a variable it does not declare.
        '[[template]]\nid = "x"\ntitle = "x"\ncategory = "support"\nsms = "{{who}}"\n'
        'email_subject = "s"\nemail_body = "b"\n',
        # A declared variable the e-mail wording does not use.
        '[[template]]\nid = "x"\ntitle = "x"\ncategory = "support"\n'
        'variables = [{ name = "who", type = "text", max_length = 5 }]\n'
        'sms = "{{who}}"\nemail_subject = "s"\nemail_body = "b"\n',
        # No e-mail wording.
        '[[template]]\nid = "x"\ntitle = "x"\ncategory = "support"\nsms = "本文"\n',
        # A placeholder that is not one.
        '[[template]]\nid = "x"\ntitle = "x"\ncategory = "support"\nsms = "{{ who }}"\n'
        'email_subject = "s"\nemail_body = "b"\n',
    ],
)
def test_a_template_file_breaking_a_rule_is_refused(template: str) -> None:
    parse_catalog(_catalog_with(""))  # the frame itself is fine
    with pytest.raises(CatalogError):
        parse_catalog(_catalog_with(template))


def test_a_category_without_a_channel_is_refused() -> None:
    only_sms = MARKETING + "".join(
        f'[[template]]\nid = "t_{c}"\ntitle = "t"\ncategory = "{c}"\nsms = "本文"\n'
        f'email_subject = "s"\nemail_body = "b"\n'
        for c in Category
        if c is not Category.MARKETING
    )
    with pytest.raises(CatalogError):
        parse_catalog(only_sms)


def test_marketing_ends_with_the_sender_and_an_opt_out_line() -> None:
    campaign = CATALOG.templates["campaign"]
    for channel in Channel:
        rendered = render(campaign, channel, VARIABLES["campaign"])
        lines = rendered.body.splitlines()
        assert lines[-2] == CATALOG.marketing.sender_identification
        assert lines[-1] == CATALOG.marketing.opt_out[channel]
    support = render(CATALOG.templates["repair_ready"], Channel.SMS, VARIABLES["repair_ready"])
    assert CATALOG.marketing.sender_identification not in support.body


def test_typed_variables_are_shown_in_japanese_forms() -> None:
    rendered = render(
        CATALOG.templates["payment_reminder"],
        Channel.EMAIL,
        {"due_date": "2026-12-05", "amount": "0012800"},
    )
    assert "2026年12月5日までに" in rendered.body
    assert "12,800円" in rendered.body
    change = render(
        CATALOG.templates["appointment_change"], Channel.SMS, VARIABLES["appointment_change"]
    )
    assert "2026年12月5日 14:30に変更しました" in change.body


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("device_model", "{{store_name}}"),  # a placeholder is data, and refused
        ("device_model", "詳細は bit.ly/abc へ"),
        ("device_model", "ＨＴＴＰＳ：／／ｅｘａｍｐｌｅ．ｊｐ"),  # full-width, folded first
        ("device_model", "０９０‐１２３４‐５６７８"),
        ("device_model", "03 1234 5678"),
        ("device_model", "1234 5678 9018"),  # an Individual Number
        ("device_model", "\u202eevil"),  # a bidirectional override
        ("device_model", "   "),
        ("store_name", "店" * 31),
    ],
)
def test_variables_cannot_carry_links_numbers_or_wording(name: str, value: str) -> None:
    values = {**VARIABLES["repair_ready"], name: value}
    with pytest.raises(ValidationFailed) as refused:
        render(CATALOG.templates["repair_ready"], Channel.SMS, values)
    assert value not in str(refused.value.extra)


@pytest.mark.parametrize(
    ("kind", "value"),
    [("date", "2026-02-30"), ("date", "12/05"), ("time", "24:00"), ("time", "9:30")],
)
def test_dates_and_times_must_be_real(kind: str, value: str) -> None:
    values = dict(VARIABLES["appointment_change"])
    values["appointment_date" if kind == "date" else "appointment_time"] = value
    with pytest.raises(ValidationFailed):
        render(CATALOG.templates["appointment_change"], Channel.SMS, values)


def test_numbers_are_whole_and_bounded() -> None:
    template = CATALOG.templates["payment_reminder"]
    for amount in (-1, True, "12.5", "12,800", 12_345_678):
        with pytest.raises(ValidationFailed):
            render(template, Channel.SMS, {"due_date": "2026-12-05", "amount": amount})


def test_sms_length_counts_what_carriers_count() -> None:
    assert sms_length("あ" * 670) == SMS_MAX_LENGTH
    assert sms_length("😀") == 2  # outside the BMP: two UCS-2 units
    variables = dict(VARIABLES["inquiry_follow_up"])
    template = CATALOG.templates["inquiry_follow_up"]
    frame = sms_length(render(template, Channel.SMS, {**variables, "summary": "あ"}).body) - 1
    fits = {**variables, "summary": "あ" * (SMS_MAX_LENGTH - frame)}
    assert sms_length(render(template, Channel.SMS, fits).body) == SMS_MAX_LENGTH
    with pytest.raises(ValidationFailed):
        render(template, Channel.SMS, {**variables, "summary": "あ" * (SMS_MAX_LENGTH - frame + 1)})


@pytest.mark.parametrize(
    ("local", "quiet", "resumes"),
    [
        ("2026-12-01T07:59:59", True, "2026-12-01T08:00:00"),
        ("2026-12-01T08:00:00", False, None),
        ("2026-12-01T20:59:59", False, None),
        ("2026-12-01T21:00:00", True, "2026-12-02T08:00:00"),
        ("2026-12-31T23:30:00", True, "2027-01-01T08:00:00"),
    ],
)
def test_quiet_hours_are_japan_time(local: str, quiet: bool, resumes: str | None) -> None:
    moment = datetime.fromisoformat(local).replace(tzinfo=TOKYO).astimezone(UTC)
    assert in_quiet_hours(moment) is quiet
    if resumes is not None:
        expected = datetime.fromisoformat(resumes).replace(tzinfo=TOKYO)
        assert end_of_quiet_hours(moment) == expected
