"""Delivering one notification to one sink: a signed webhook, Slack, Teams or e-mail.

Each sink type is a formatter (a result or approval request -> that sink's payload) and a
transport (HTTP POST, or SMTP with STARTTLS and login). A failure raises `DeliveryFailed`,
saying whether trying again may help: the notifier retries those through its delay queues
and dead-letters the others at once.

Every delivery names its job: receivers de-duplicate on it (delivery is at least once).
The generic webhook is signed as the Standard Webhooks specification says
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``, keyed by the base64 after ``whsec_``), so receivers verify it with
the existing libraries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import aiosmtplib
import msgspec

from shared.errors import TriggersError
from shared.jobs import progress_text
from shared.messages import JobNotice, NotificationDelivery, ResultEvent, ServiceState
from shared.notify_store import Sink

__all__ = [
    "DeliveryFailed",
    "Message",
    "SinkSender",
    "describe",
    "sign_webhook",
    "webhook_body",
]

_MARK = {
    "succeeded": "✅",
    "failed": "❌",
    "skipped": "⚪",
    "rejected": "⛔",
    "expired": "⌛",
    "pending_approval": "⏸️",
    "running": "▶️",
}
_COLOUR = {"succeeded": "Good", "failed": "Attention", "rejected": "Attention"}
# HTTP answers worth another try; every other 4xx is the request's fault and stays one.
_RETRYABLE_STATUS = {408, 425, 429}


class DeliveryFailed(TriggersError):
    """A delivery that did not go through; `retryable` says whether to try again."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class Message:
    """A notification in words, from which each sink builds its payload."""

    job_id: str
    status: str
    title: str
    facts: list[tuple[str, str]]
    job_url: str
    approval_url: str | None = None


def _state(state: ServiceState | None) -> str:
    if state is None:
        return "-"
    return f"{state.replicas} x {state.image} (rev {state.revision})"


def _changes(event: ResultEvent) -> list[tuple[str, str]]:
    facts = []
    for service in sorted(set(event.before) | set(event.after)):
        before, after = event.before.get(service), event.after.get(service)
        facts.append((service, f"{_state(before)} → {_state(after)}"))
    return facts


def _caller(event: ResultEvent | JobNotice) -> str:
    source = event.source
    parts = [source.remote or "unknown"]
    if source.user_agent:
        parts.append(f"({source.user_agent})")
    origin = source.origin
    if origin is not None:
        what = origin.repository and f"{origin.repository}:{origin.tag or ''}".rstrip(":")
        parts.append(f"via {origin.source}" + (f" {what or origin.alert or ''}".rstrip()))
    return " ".join(parts)


def describe(
    delivery: NotificationDelivery, public_url: str, approval_url: str | None = None
) -> Message:
    """A result or an approval request, in words every sink type uses."""
    event: ResultEvent | JobNotice | None = delivery.result or delivery.notice
    if event is None:
        msg = "a delivery carries a result or a notice"
        raise DeliveryFailed(msg, retryable=False)
    target = "/".join(p for p in (event.cluster, event.app, event.service) if p)
    job_url = f"{public_url.rstrip('/')}/v1/jobs/{event.job_id}"
    mark = _MARK.get(event.status, "•")
    facts: list[tuple[str, str]] = []
    if isinstance(event, JobNotice) and event.status == "running":
        title = f"{mark} {event.action} of {target} running"
        facts.append(("attempt", str(event.attempt)))
        if event.progress:
            facts.append(("progress", progress_text(event.progress, event.service)))
    elif isinstance(event, JobNotice):
        title = f"{mark} Approval needed: {event.action} of {target}"
        facts.append(("approvals needed", str(event.approvals or 1)))
        if event.expires_at is not None:
            facts.append(("expires", event.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")))
    else:
        title = f"{mark} {event.action} of {target} {event.status}"
        facts.extend(_changes(event))
        if event.error:
            facts.append(("error", event.error))
        if event.duration_ms is not None:
            facts.append(("duration", f"{event.duration_ms:.0f} ms"))
    facts.append(("caller", _caller(event)))
    facts.append(("job", event.job_id))
    return Message(
        job_id=event.job_id,
        status=event.status,
        title=title,
        facts=facts,
        job_url=job_url,
        approval_url=approval_url,
    )


def webhook_body(delivery: NotificationDelivery, message: Message) -> bytes:
    """The generic webhook's JSON: ``{"type": "job.<status>", "timestamp", "data"}``."""
    event = delivery.result or delivery.notice
    data: dict[str, Any] = msgspec.to_builtins(event)
    if message.approval_url:
        data["approval_url"] = message.approval_url
    data["job_url"] = message.job_url
    body = {
        "type": f"job.{message.status}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data,
    }
    return msgspec.json.encode(body)


def sign_webhook(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value: ``v1,<base64 HMAC-SHA256>``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _slack(message: Message) -> dict[str, Any]:
    lines = "\n".join(f"*{name}*: {value}" for name, value in message.facts)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": lines[:2900]}},
    ]
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": "Job"}, "url": message.job_url}
    ]
    if message.approval_url:
        buttons.insert(
            0,
            {
                "type": "button",
                "style": "primary",
                "text": {"type": "plain_text", "text": "Approve or reject"},
                "url": message.approval_url,
            },
        )
    blocks.append({"type": "actions", "elements": buttons})
    # `text` is what notifications and clients without blocks show.
    return {"text": f"{message.title} (job {message.job_id})", "blocks": blocks}


def _teams(message: Message) -> dict[str, Any]:
    actions = [{"type": "Action.OpenUrl", "title": "Job", "url": message.job_url}]
    if message.approval_url:
        actions.insert(
            0, {"type": "Action.OpenUrl", "title": "Approve or reject", "url": message.approval_url}
        )
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": message.title,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": _COLOUR.get(message.status, "Default"),
            },
            {
                "type": "FactSet",
                "facts": [{"title": name, "value": value} for name, value in message.facts],
            },
        ],
        "actions": actions,
    }
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _email(sink: Sink, message: Message) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = message.title
    mail["From"] = sink.sender or "container-triggers@localhost"
    mail["To"] = ", ".join(sink.to)
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = make_msgid(idstring=message.job_id, domain="container-triggers")
    mail["X-Triggers-Job-Id"] = message.job_id
    lines = [message.title, "", *(f"{name}: {value}" for name, value in message.facts)]
    lines += ["", f"Job: {message.job_url}"]
    if message.approval_url:
        lines += ["", f"Approve or reject: {message.approval_url}"]
    mail.set_content("\n".join(lines) + "\n")
    return mail


def _digest_email(sink: Sink, messages: list[Message]) -> EmailMessage:
    counts: dict[str, int] = {}
    for message in messages:
        counts[message.status] = counts.get(message.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    mail = EmailMessage()
    mail["Subject"] = f"container-triggers: {len(messages)} results ({summary})"
    mail["From"] = sink.sender or "container-triggers@localhost"
    mail["To"] = ", ".join(sink.to)
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = make_msgid(domain="container-triggers")
    mail["X-Triggers-Job-Ids"] = " ".join(m.job_id for m in messages)
    lines: list[str] = []
    for message in messages:
        lines += [message.title, *(f"  {name}: {value}" for name, value in message.facts)]
        lines += [f"  {message.job_url}", ""]
    mail.set_content("\n".join(lines))
    return mail


class SinkSender:
    """Sends deliveries; one HTTP session for all of them."""

    def __init__(
        self,
        public_url: str,
        *,
        timeout: float = 10.0,
        smtp_cafile: str | None = None,
    ) -> None:
        self._public_url = public_url
        self._timeout = timeout
        self._smtp_cafile = smtp_cafile
        self._http: aiohttp.ClientSession | None = None

    async def send(
        self, sink: Sink, delivery: NotificationDelivery, approval_url: str | None = None
    ) -> None:
        """Deliver once; raise `DeliveryFailed` when it did not go through."""
        message = describe(delivery, self._public_url, approval_url)
        if sink.type == "email":
            await self._smtp(sink, message)
            return
        headers = {"Content-Type": "application/json", "User-Agent": "container-triggers"}
        if sink.type == "webhook":
            body = webhook_body(delivery, message)
            # The same id on every retry of this delivery: receivers de-duplicate on it.
            message_id = f"msg_{message.job_id}_{message.status}"
            timestamp = int(time.time())
            headers["webhook-id"] = message_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign_webhook(
                sink.secret or "", message_id, timestamp, body
            )
        else:
            payload = _slack(message) if sink.type == "slack" else _teams(message)
            body = msgspec.json.encode(payload)
        headers["X-Triggers-Job-Id"] = message.job_id
        await self._post(sink, body, headers)

    async def _post(self, sink: Sink, body: bytes, headers: dict[str, str]) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        try:
            async with self._http.post(sink.url, data=body, headers=headers) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise DeliveryFailed(reason, retryable=True) from None
        if status < 300:
            return
        retryable = status >= 500 or status in _RETRYABLE_STATUS
        raise DeliveryFailed(f"HTTP {status} from the {sink.type} sink", retryable=retryable)

    async def send_digest(self, sink: Sink, deliveries: list[NotificationDelivery]) -> None:
        """One mail listing several results (an email sink with a digest interval)."""
        messages = [describe(d, self._public_url) for d in deliveries]
        await self._mail(sink, _digest_email(sink, messages))

    async def _smtp(self, sink: Sink, message: Message) -> None:
        await self._mail(sink, _email(sink, message))

    async def _mail(self, sink: Sink, mail: EmailMessage) -> None:
        parts = urlsplit(sink.url)
        query = parse_qs(parts.query)
        implicit = parts.scheme == "smtps"
        starttls = not implicit and query.get("starttls", ["on"])[0] not in ("off", "false", "0")
        context = ssl.create_default_context(cafile=self._smtp_cafile)
        try:
            await aiosmtplib.send(
                mail,
                hostname=parts.hostname,
                port=parts.port or (465 if implicit else 587),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                use_tls=implicit,
                start_tls=starttls,
                tls_context=context if implicit or starttls else None,
                timeout=self._timeout,
            )
        except (aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPRecipientsRefused) as exc:
            raise DeliveryFailed(f"SMTP refused: {exc}", retryable=False) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryFailed(f"SMTP: {type(exc).__name__}: {exc}", retryable=True) from None

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._http is not None:
            await self._http.close()
            self._http = None
