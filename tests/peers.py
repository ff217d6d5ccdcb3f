"""Real peers for the outbox worker: an SMTP server (aiosmtpd) and an HTTP server playing the SMS
gateway, each on 127.0.0.1 and an ephemeral port, in a thread of its own."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# --- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfSigned:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Verifies the peer (hostname and chain) against this certificate only."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(directory: Path) -> SelfSigned:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shopvault test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp.crt", directory / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return SelfSigned(cert_path, key_path)


# --- SMTP ---------------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    authenticated_as: str | None
    tls: bool

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class SmtpSink:
    """An aiosmtpd server that keeps every message it accepts.

    ``connections`` counts the SMTP connections made to it. ``drop``: the ordinal numbers
    (1-based, over every ``DATA`` it gets) at which it closes the connection instead of
    answering, the message not kept (a server that went away mid-transaction). ``on_data`` is
    called (in the server's thread) with each ordinal before it answers."""

    def __init__(
        self,
        *,
        tls: SelfSigned | None = None,
        credentials: tuple[str, str] | None = None,
        drop: Collection[int] = (),
        on_data: Callable[[int], None] | None = None,
    ) -> None:
        self.received: list[Received] = []
        self.connections = 0
        self._data_seen = 0
        self._drop = frozenset(drop)
        self._on_data = on_data
        self._tls = tls
        self._credentials = credentials
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def message_ids(self) -> list[str]:
        return [str(r.message["Message-ID"]) for r in self.received]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._data_seen += 1
        if self._on_data is not None:
            self._on_data(self._data_seen)
        if self._data_seen in self._drop:
            assert server.transport is not None
            server.transport.abort()
            return "421 closing"
        assert envelope.mail_from is not None and isinstance(envelope.original_content, bytes)
        login = session.auth_data.login.decode() if session.authenticated else None
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                login,
                session.ssl is not None,
            )
        )
        return "250 OK"

    def _authenticate(
        self, _server: SMTP, _session: Session, _envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        ok = (
            isinstance(data, LoginPassword)
            and (
                data.login.decode(),
                data.password.decode(),
            )
            == self._credentials
        )
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def _protocol(self) -> SMTP:
        self.connections += 1
        return SMTP(
            self,
            hostname="localhost",
            tls_context=self._tls.server_context() if self._tls else None,
            require_starttls=self._tls is not None,
            authenticator=self._authenticate if self._credentials else None,
            auth_required=self._credentials is not None,
            auth_require_tls=True,
            loop=self._loop,
        )

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def _start(self) -> asyncio.Server:
        return await self._loop.create_server(self._protocol, "127.0.0.1", 0)

    def __exit__(self, *_exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


# --- the SMS gateway ----------------------------------------------------------------------------


@dataclass
class GatewayRequest:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class SmsGateway:
    """Answers ``POST /send`` as told: ``accept`` (202 with an id), ``error`` (500), ``reject``
    (400), ``redirect`` (302 elsewhere) or ``stall`` (no answer until the test ends). A script of
    answers is used first, then ``default``."""

    default: str = "accept"
    port: int = 0
    script: list[str] = field(default_factory=list)
    requests: list[GatewayRequest] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    def next_answer(self) -> str:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def __enter__(self) -> SmsGateway:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with gateway.lock:
                    gateway.requests.append(
                        GatewayRequest(self.path, dict(self.headers.items()), json.loads(raw))
                    )
                    number = len(gateway.requests)
                answer = gateway.next_answer()
                if answer == "stall":
                    gateway.released.wait(timeout=30)
                    return
                if answer == "accept":
                    self._reply(202, {"id": f"gw-{number}", "status": "accepted"})
                elif answer == "error":
                    self._reply(500, {"error": "internal"})
                elif answer == "reject":
                    self._reply(400, {"error": "bad request"})
                elif answer == "redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{gateway.port}/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def _reply(self, status: int, body: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def sent_references(self) -> Iterator[str]:
        for request in self.requests:
            yield request.body["reference"]
