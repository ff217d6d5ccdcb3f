"""Delivery backends: email over SMTP, SMS through the HTTP gateway, or files for trying it out.

Every backend gets the message already rendered and the address already decrypted, and either
returns (delivered; maybe with the provider's reference) or raises ``DeliveryFailed`` saying
whether trying again could help. Failure reasons are short codes, never an address or a server's
own words (an SMTP reply can quote the recipient).

Email goes out a batch at a time (``send_many``): over SMTP, the whole batch on one connection,
kept open while the worker has more to send and let go when it runs out (``idle``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import smtplib
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from pathlib import Path
from typing import Protocol

import httpx

from app.messages.rules import TOKYO

# Used in the From: of files written without a configured sender; never sent anywhere.
FILE_SENDER = "shopvault@localhost.invalid"
FILE_SMS_SENDER_ID = "SHOPVAULT"
MAX_GATEWAY_RESPONSE_BYTES = 64 * 1024
_REFERENCE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


class DeliveryFailed(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    message_id: str
    to: str
    subject: str
    body: str
    date: datetime


@dataclass(frozen=True, slots=True)
class OutgoingSms:
    message_id: str
    to: str  # E.164
    body: str


# What one email in a batch came to: delivered (with the provider's reference, if any), or why not.
SendResult = str | None | DeliveryFailed
StopAsked = Callable[[], bool]


def _never() -> bool:
    return False


class MailBackend(Protocol):
    description: str

    async def send(self, email: OutgoingEmail) -> str | None: ...

    async def send_many(
        self, emails: Sequence[OutgoingEmail], stop: StopAsked = _never
    ) -> list[SendResult]:
        """Send in order, one result per email attempted; ``stop()`` is asked before each, and
        once it says yes the rest are left unattempted (the list is then shorter)."""
        ...

    async def idle(self) -> None:
        """Nothing more to send for now: let go of any open connection."""
        ...

    async def aclose(self) -> None: ...


class SmsBackend(Protocol):
    description: str

    async def send(self, sms: OutgoingSms) -> str | None: ...

    async def aclose(self) -> None: ...


def build_email(email: OutgoingEmail, sender: str) -> EmailMessage:
    """UTF-8 subject and body, ``Date`` in Japan time, and a ``Message-ID`` derived from the
    message's id: a retry after an unclear failure carries the same one, so that the receiving
    side can recognise a duplicate."""
    domain = sender.rpartition("@")[2] or "localhost.invalid"
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = format_datetime(email.date.astimezone(TOKYO))
    message["Message-ID"] = f"<{email.message_id}@{domain}>"
    message.set_content(email.body, charset="utf-8")
    return message


# An address that needs nothing from SMTPUTF8 or header encoding (what email-validator lets
# through for nearly everyone); any other goes through ``EmailMessage``.
# RFC 5322's limit on a line, without its CRLF: a longer one goes out in base64.
_MAX_LINE_BYTES = 998
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}")


def email_bytes(email: OutgoingEmail, sender: str) -> tuple[bytes, str] | None:
    """What ``build_email`` makes, as the bytes sent and the ``Message-ID``, written directly:
    ``EmailMessage``'s header registry parses every header it is given and flattening parses
    them again, a fifth of a worker's time. None for an address outside plain ASCII."""
    if not (_PLAIN_ADDRESS.fullmatch(sender) and _PLAIN_ADDRESS.fullmatch(email.to)):
        return None
    message_id = f"<{email.message_id}@{sender.rpartition('@')[2]}>"
    # Always encoded words (the charset is not ASCII), so no byte of the subject reaches the
    # header as it is: no line break can be slipped in.
    subject = Header(email.subject, "utf-8", header_name="Subject").encode(linesep="\r\n")
    lines = email.body.encode().splitlines() or [b""]  # as EmailMessage splits them
    if max(map(len, lines), default=0) <= _MAX_LINE_BYTES:
        encoding, body = "8bit", b"".join(line + b"\r\n" for line in lines)
    else:
        raw = b"".join(line + b"\r\n" for line in lines)
        encoding, body = "base64", base64.encodebytes(raw).replace(b"\n", b"\r\n")
    head = (
        f"From: {sender}\r\n"
        f"To: {email.to}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {format_datetime(email.date.astimezone(TOKYO))}\r\n"
        f"Message-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    return head.encode("ascii") + body, message_id


def _write_private(directory: Path, name: str, data: bytes) -> Path:
    """Write atomically, readable by the owner only (the file holds personal data)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    except OSError:
        raise DeliveryFailed("file_unwritable", permanent=False) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        target = directory / name
        os.replace(temporary, target)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DeliveryFailed("file_unwritable", permanent=False) from None
        raise
    return target


class FileMail:
    """Each email as an ``.eml`` file under ``<DATA_DIR>/outbox/mail`` (development only)."""

    def __init__(self, directory: Path, sender: str | None) -> None:
        self.directory = directory
        self.sender = sender or FILE_SENDER
        self.description = f"email to files in {directory}"

    async def send(self, email: OutgoingEmail) -> str | None:
        built = email_bytes(email, self.sender)
        if built is None:
            message = build_email(email, self.sender)
            built = message.as_bytes(), str(message["Message-ID"])
        data, message_id = built
        await asyncio.to_thread(_write_private, self.directory, f"{email.message_id}.eml", data)
        return message_id

    async def send_many(
        self, emails: Sequence[OutgoingEmail], stop: StopAsked = _never
    ) -> list[SendResult]:
        results: list[SendResult] = []
        for email in emails:
            if stop():
                break
            try:
                results.append(await self.send(email))
            except DeliveryFailed as failure:
                results.append(failure)
        return results

    async def idle(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class SmtpMail:
    """Email over SMTP with the standard library, in a thread: STARTTLS (certificate verified)
    when configured, and login only over it.

    One connection carries a whole batch (and the next, while there are more): a new one is
    opened only when there is none or the server dropped it. A connection found dropped before
    the email was handed over is replaced and the email sent on the new one; one that cannot be
    opened fails the rest of the batch with the same reason (no reconnecting for each email).
    Only one batch at a time (the worker is sequential)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        starttls: bool,
        username: str | None,
        password: str | None,
        timeout: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password = starttls, username, password
        self.timeout = timeout
        self.tls_context = tls_context
        tls = " with STARTTLS" if starttls else ""
        self.description = f"email over SMTP to {host}:{port}{tls}"
        self._smtp: smtplib.SMTP | None = None

    async def send(self, email: OutgoingEmail) -> str | None:
        (result,) = await self.send_many([email])
        if isinstance(result, DeliveryFailed):
            raise result
        return result

    async def send_many(
        self, emails: Sequence[OutgoingEmail], stop: StopAsked = _never
    ) -> list[SendResult]:
        if not emails:
            return []
        return await asyncio.to_thread(self._send_many, emails, stop)

    async def idle(self) -> None:
        await asyncio.to_thread(self._disconnect)

    async def aclose(self) -> None:
        await self.idle()

    # --- in the thread ---------------------------------------------------------------------

    def _send_many(self, emails: Sequence[OutgoingEmail], stop: StopAsked) -> list[SendResult]:
        self._check_kept_connection()
        results: list[SendResult] = []
        for email in emails:
            if stop():
                break
            try:
                smtp = self._connection()
            except (smtplib.SMTPException, OSError) as exc:
                # Cannot connect: the rest of the batch would fail the same way.
                failure = _smtp_failure(exc)
                results.extend(failure for _ in emails[len(results) :])
                break
            results.append(self._send_one(smtp, email))
        return results

    def _send_one(self, smtp: smtplib.SMTP, email: OutgoingEmail) -> SendResult:
        built = email_bytes(email, self.sender)
        try:
            if built is None:
                # SMTPUTF8 and the headers' encoding as the standard library does them.
                message = build_email(email, self.sender)
                smtp.send_message(message, from_addr=self.sender, to_addrs=[email.to])
                return str(message["Message-ID"])
            smtp.sendmail(self.sender, [email.to], built[0])
        except (smtplib.SMTPException, OSError) as exc:
            failure = _smtp_failure(exc)
            # After a refused recipient, sender or data smtplib has reset the transaction and
            # the connection goes on; after anything else (or 421) it is not trusted again.
            kept = isinstance(exc, smtplib.SMTPRecipientsRefused) or (
                isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code != 421
            )
            if not kept:
                self._disconnect()
            return failure
        return built[1]

    def _check_kept_connection(self) -> None:
        """A connection kept from an earlier batch may have been let go by the server: ask
        (``NOOP``) before handing it an email, so that an email is never sent twice because a
        connection died under it."""
        if self._smtp is None:
            return
        try:
            code, _ = self._smtp.noop()
        except (smtplib.SMTPException, OSError):
            code = 0
        if code != 250:
            self._disconnect()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None:
            return self._smtp
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=self.tls_context or ssl.create_default_context())
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        return smtp

    def _disconnect(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _smtp_failure(exc: smtplib.SMTPException | OSError) -> DeliveryFailed:
    """The short code for what went wrong (never the server's words: they can quote the
    recipient), and whether trying again could help."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return DeliveryFailed("smtp_recipient_refused", permanent=True)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return DeliveryFailed("smtp_authentication_failed", permanent=False)
    if isinstance(exc, smtplib.SMTPResponseException):
        permanent = 500 <= exc.smtp_code < 600
        return DeliveryFailed(f"smtp_{exc.smtp_code}", permanent=permanent)
    return DeliveryFailed("smtp_unavailable", permanent=False)


def sms_payload(sms: OutgoingSms, sender_id: str) -> dict[str, str]:
    return {"to": sms.to, "from": sender_id, "body": sms.body, "reference": sms.message_id}


class FileSms:
    """Each SMS as the JSON the gateway would get, under ``<DATA_DIR>/outbox/sms``."""

    def __init__(self, directory: Path, sender_id: str | None) -> None:
        self.directory = directory
        self.sender_id = sender_id or FILE_SMS_SENDER_ID
        self.description = f"SMS to files in {directory}"

    async def send(self, sms: OutgoingSms) -> str | None:
        data = json.dumps(sms_payload(sms, self.sender_id), ensure_ascii=False, indent=2)
        await asyncio.to_thread(
            _write_private, self.directory, f"{sms.message_id}.json", data.encode() + b"\n"
        )
        return None

    async def aclose(self) -> None:
        return None


class HttpSms:
    """``POST`` to the SMS gateway with a bearer token; a ``2xx`` answer means accepted.

    Redirects are not followed (a gateway that moved is a configuration to fix, not a hop to
    take with the customer's number), timeouts are short, and the answer is read only up to a
    bound."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        sender_id: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, self.sender_id = url, sender_id
        self._headers = {"Authorization": f"Bearer {token}"}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=transport,
        )
        self.description = f"SMS through the gateway at {httpx.URL(url).host}"

    async def send(self, sms: OutgoingSms) -> str | None:
        try:
            async with self._client.stream(
                "POST", self.url, json=sms_payload(sms, self.sender_id), headers=self._headers
            ) as response:
                status = response.status_code
                content = b""
                if 200 <= status < 300:
                    async for chunk in response.aiter_bytes():
                        content += chunk
                        if len(content) > MAX_GATEWAY_RESPONSE_BYTES:
                            break
        except httpx.TimeoutException:
            raise DeliveryFailed("gateway_timeout", permanent=False) from None
        except httpx.HTTPError:
            raise DeliveryFailed("gateway_unreachable", permanent=False) from None
        if 200 <= status < 300:
            return _gateway_reference(content)
        if 300 <= status < 400:
            raise DeliveryFailed("gateway_redirect", permanent=True)
        transient = status in {408, 425, 429} or status >= 500
        raise DeliveryFailed(f"gateway_{status}", permanent=not transient)

    async def aclose(self) -> None:
        await self._client.aclose()


def _gateway_reference(content: bytes) -> str | None:
    """The gateway's id for the message, when its answer carries a sensible one."""
    try:
        answer = json.loads(content)
    except ValueError:
        return None
    if isinstance(answer, dict):
        reference = answer.get("id")
        if isinstance(reference, str) and _REFERENCE.fullmatch(reference):
            return reference
    return None
