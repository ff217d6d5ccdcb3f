"""An email written directly as bytes (``email_bytes``, what the SMTP worker sends) reads as the
same email as the standard library's ``EmailMessage`` builds (``build_email``), and nothing in a
subject can add a header."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy

from hypothesis import given, settings
from hypothesis import strategies as st

from app.messages.delivery import OutgoingEmail, build_email, email_bytes

SENDER = "info@shop.example.jp"
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=400)
# EmailMessage refuses a line break of any kind in a header; the catalogue's subjects have none.
BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
SUBJECT = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters=BREAKS), min_size=1, max_size=200
)


@settings(max_examples=200, deadline=None)
@given(subject=SUBJECT, body=TEXT | st.text("あ\n", min_size=999, max_size=1200))
def test_the_bytes_read_as_the_standard_librarys_email(subject: str, body: str) -> None:
    email = OutgoingEmail(
        message_id="0193a0b2-7c1e-7000-8000-000000000001",
        to="hanako.sato+shop@example.co.jp",
        subject=subject,
        body=body,
        date=datetime(2026, 11, 30, 9, 30, tzinfo=UTC),
    )
    built = email_bytes(email, SENDER)
    assert built is not None
    data, message_id = built
    ours = message_from_bytes(data, policy=policy.SMTP)
    theirs = message_from_bytes(build_email(email, SENDER).as_bytes(), policy=policy.SMTP)
    for header in ("From", "To", "Subject", "Date", "Message-ID", "Content-Type"):
        # (The standard library drops a subject's surrounding white space; we keep it.)
        assert str(ours[header]).strip() == str(theirs[header]).strip(), header
    assert message_id == str(theirs["Message-ID"])
    assert ours.get_content() == theirs.get_content()
    assert set(ours.keys()) == set(theirs.keys())  # no header slipped in through the subject
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_an_address_outside_ascii_is_left_to_the_standard_library() -> None:
    email = OutgoingEmail("m-1", "山田@例え.jp", "件名", "本文", datetime.now(UTC))
    assert email_bytes(email, SENDER) is None
    assert (
        email_bytes(OutgoingEmail("m-1", "a@b.jp", "s", "b", datetime.now(UTC)), "店@b.jp") is None
    )


def test_a_line_break_in_a_subject_stays_in_the_subject() -> None:
    subject = "お知らせ\r\nBcc: someone@example.com\r\n\r\n本文の偽物"
    built = email_bytes(OutgoingEmail("m-1", "a@b.jp", subject, "本文", datetime.now(UTC)), SENDER)
    assert built is not None
    parsed = message_from_bytes(built[0], policy=policy.SMTP)
    assert "Bcc" not in parsed
    assert parsed.get_content() == "本文\r\n"
    assert str(parsed["Subject"]).replace("\r\n", "").startswith("お知らせ")
