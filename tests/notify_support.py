"""Real local receivers for notification tests: a webhook/Slack/Teams stand-in and SMTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.support.processes import free_port

__all__ = [
    "Mailbox",
    "Receiver",
    "purge_notifier_queues",
    "receiver",
    "running_notifier",
    "smtp_server",
]


@dataclass
class Receiver:
    """An HTTP endpoint that records what it is sent (headers and JSON), on 127.0.0.1."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Answer this status (e.g. 500 to make the sender retry); delay each answer.
    status: int = 200
    delay: float = 0.0

    def bodies(self) -> list[dict[str, Any]]:
        """Every JSON body received, in order."""
        return [json.loads(body) for _, body in self.received]

    def job_ids(self) -> list[str]:
        """The job id every delivery carried, in order (duplicates kept)."""
        return [headers.get("X-Triggers-Job-Id", "") for headers, _ in self.received]

    async def wait_for(self, count: int, within: float = 20.0) -> None:
        """Until `count` requests arrived."""
        async with asyncio.timeout(within), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)

    async def wait_for_jobs(self, job_ids: set[str], within: float = 60.0) -> None:
        """Until every job id of `job_ids` arrived at least once."""
        async with asyncio.timeout(within), self.arrived:
            await self.arrived.wait_for(lambda: job_ids <= set(self.job_ids()))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status < 300:
            async with self.arrived:
                self.received.append((dict(request.headers), body))
                self.arrived.notify_all()
        return web.Response(status=self.status, text="ok")


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A running `Receiver` at ``http://127.0.0.1:<port>/hook``."""
    recorder = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recorder._handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    recorder.url = str(server.make_url("/hook"))
    try:
        yield recorder
    finally:
        await server.close()


@dataclass
class Mailbox:
    """Mail an SMTP server received, with the login each came with."""

    port: int
    cafile: str
    messages: list[Message] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        """aiosmtpd's hook: keep the message."""
        content = envelope.original_content or b""
        self.messages.append(message_from_bytes(content))
        return "250 OK"


def _certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "smtp.crt", folder / "smtp.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.asynccontextmanager
async def smtp_server(folder: Path, user: str, password: str) -> AsyncIterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that requires STARTTLS, then a login."""
    cert, key = _certificate(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mailbox = Mailbox(port=free_port(), cafile=str(cert))

    def authenticate(
        server: SmtpServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            user.encode(),
            password.encode(),
        )
        if ok:
            mailbox.logins.append(user)
        return AuthResult(success=ok)

    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=mailbox.port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()


async def purge_notifier_queues(amqp_url: str) -> None:
    """Empty the notifier's queues: earlier tests of the session may have left results."""
    import aio_pika  # noqa: PLC0415

    from shared.topology import NOTIFIER_QUEUE, NOTIFY_DELIVERIES_QUEUE  # noqa: PLC0415

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (NOTIFIER_QUEUE, NOTIFY_DELIVERIES_QUEUE):
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                channel = await connection.channel()
                continue
            await queue.purge()


@contextlib.asynccontextmanager
async def running_notifier(settings: Any) -> AsyncIterator[Any]:
    """A notifier in this process, on its own connections, with emptied queues."""
    from shared.broker import AmqpBus  # noqa: PLC0415
    from shared.notify_store import open_notify_store  # noqa: PLC0415
    from shared.store import open_store  # noqa: PLC0415
    from workers.notifier import Notifier  # noqa: PLC0415

    await purge_notifier_queues(settings.amqp_url)
    store = open_notify_store(settings.database)
    triggers = open_store(settings.database)
    bus = AmqpBus.from_settings(settings, "test-notifier")
    await bus.start()
    notifier = Notifier(settings, store=store, triggers=triggers, bus=bus)
    await notifier.start()
    try:
        yield notifier
    finally:
        await notifier.stop()
        await bus.close()
        await triggers.close()
        await store.close()
