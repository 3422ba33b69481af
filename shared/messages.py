"""Wire formats: every message that crosses the broker, as versioned msgspec Structs.

Nothing else in the project defines a wire format. Compatible changes add fields with
defaults; a breaking change gets a new tag (``redeploy.v2``) so old and new workers can
tell them apart during a rolling upgrade.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from shared.encoding import encode_json

__all__ = [
    "COMMAND_CONTENT_TYPE",
    "NOTICE_CONTENT_TYPE",
    "RESULT_CONTENT_TYPE",
    "Action",
    "Command",
    "CommandEnvelope",
    "Direction",
    "JobNotice",
    "JobStatus",
    "NotificationDelivery",
    "Origin",
    "Redeploy",
    "ResultEvent",
    "RolloutProgress",
    "Scale",
    "ServiceState",
    "Source",
    "Status",
    "Target",
    "decode_command",
    "decode_delivery",
    "decode_job_event",
    "decode_result",
    "encode",
    "new_job_id",
    "utcnow",
]

COMMAND_CONTENT_TYPE = "application/vnd.container-triggers.command.v1+json"
RESULT_CONTENT_TYPE = "application/vnd.container-triggers.result.v1+json"
NOTICE_CONTENT_TYPE = "application/vnd.container-triggers.notice.v1+json"

Action = Literal["redeploy", "scale"]
# `rejected` and `expired`: a call held for approval that a person rejected, or that
# nobody approved in time; its command was never published.
Status = Literal["succeeded", "failed", "skipped", "rejected", "expired"]
# A job's life: accepted (the broker confirmed the command), running (a worker took it),
# then one of the result statuses; a call held for approval is `pending_approval` first.
JobStatus = Literal[
    "pending_approval",
    "accepted",
    "running",
    "succeeded",
    "failed",
    "skipped",
    "rejected",
    "expired",
]
Direction = Literal["scale_in", "scale_out"]
Step = Annotated[int, msgspec.Meta(ge=1, le=100)]


def utcnow() -> datetime:
    """Aware UTC now; every timestamp on the wire is UTC."""
    return datetime.now(UTC)


def new_job_id() -> str:
    """A random job id (128 bits, 32 hex digits); the key that makes applying a command
    idempotent."""
    return secrets.token_hex(16)


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """What a command acts on: an application, or one service of it."""

    cluster: str
    app: str
    service: str | None = None
    namespace: str | None = None


class Origin(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The registry push or monitoring alert a command was made from.

    `source` names the sender's format (``dockerhub``, ``harbor``, ``alertmanager``...);
    the other fields are what that sender told us, for people reading the result.
    """

    source: str
    event_id: str | None = None
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None
    alert: str | None = None
    alert_status: str | None = None
    alert_key: str | None = None


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """Who or what called the trigger. Never carries the secret."""

    kind: str = "http"
    remote: str | None = None
    user_agent: str | None = None
    method: str | None = None
    origin: Origin | None = None


class Redeploy(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="redeploy.v1"):
    """Restart every service of the application, optionally with a new image.

    With `only_matching`, a redeploy whose image no service of the application runs
    changes nothing (an image-update trigger must never restart unrelated services).
    """

    image: str | None = None
    only_matching: bool = False


class Scale(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="scale.v1"):
    """Change one service's replica count by `step` in `direction`.

    `min_replicas`/`max_replicas` are the trigger's bounds, checked by the worker against
    the live replica count (the gateway cannot know it): a step that would cross a bound
    is clamped to it.
    """

    direction: Direction
    step: Step
    min_replicas: int | None = None
    max_replicas: int | None = None


Command = Redeploy | Scale


class CommandEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """A command plus everything needed to apply it once and report on it."""

    job_id: str
    trigger_id: str
    target: Target
    command: Command
    source: Source = Source()
    issued_at: datetime = msgspec.field(default_factory=utcnow)
    correlation_id: str = ""
    # The routing key of a gateway waiting for this job's result (`wait=N`): the worker
    # adds it to the result's CC header, so only that gateway gets a copy.
    reply_to: str | None = None

    @property
    def action(self) -> Action:
        """The action, as the result event and the routing keys name it."""
        return "redeploy" if isinstance(self.command, Redeploy) else "scale"


class ServiceState(msgspec.Struct, frozen=True, kw_only=True):
    """One service as an orchestrator reports it."""

    replicas: int
    image: str
    revision: int


class ResultEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to a job; published on `triggers.results` for anyone to tail.

    Consumers key on `job_id`: a redelivered command yields a second event with
    ``duplicate: true`` and the first delivery's before/after, never a second change.
    """

    job_id: str
    trigger_id: str
    action: Action
    cluster: str
    app: str
    service: str | None
    status: Status
    before: dict[str, ServiceState] = {}
    after: dict[str, ServiceState] = {}
    error: str | None = None
    detail: str | None = None
    duplicate: bool = False
    clamped: bool = False
    requested_step: int | None = None
    applied_step: int | None = None
    image: str | None = None
    orchestrator: str = ""
    attempt: int = 1
    correlation_id: str = ""
    source: Source = Source()
    issued_at: datetime | None = None
    finished_at: datetime = msgspec.field(default_factory=utcnow)
    duration_ms: float | None = None
    worker: str | None = None
    schema: str = "triggers.result.v1"


class RolloutProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far a redeploy's rollout got on one service: `updated` of `total` tasks
    (Swarm) or replicas (Kubernetes) run the new spec."""

    updated: int
    total: int


class JobNotice(msgspec.Struct, frozen=True, kw_only=True):
    """Progress of a job before its result: published on `triggers.progress`.

    Kept off `triggers.results` so that exchange carries only results, as its consumers
    expect. The recorder turns notices into the job's `running` state, or
    `pending_approval` for a call held until people approve it (`approvals` of them,
    before `expires_at`); the notifier sends those to the trigger's sinks with links.

    While a redeploy rolls out, its worker publishes `running` again as the rollout
    moves: `progress` per service being rolled out, read at `progress_at`; `seq` counts
    the notices of one attempt (0 announces `running`, 1, 2... are progress updates).
    Older readers ignore the three fields.
    """

    job_id: str
    trigger_id: str
    action: Action
    cluster: str
    app: str
    service: str | None
    status: Literal["running", "pending_approval"] = "running"
    attempt: int = 1
    correlation_id: str = ""
    source: Source = Source()
    issued_at: datetime | None = None
    at: datetime = msgspec.field(default_factory=utcnow)
    worker: str | None = None
    approvals: int | None = None
    expires_at: datetime | None = None
    progress: dict[str, RolloutProgress] = {}
    progress_at: datetime | None = None
    seq: int = 0
    schema: str = "triggers.notice.v1"


class NotificationDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """One result (or approval request) to deliver to one sink, on the notifier's queues.

    A result going to three sinks is three of these, so a sink that is down retries (and
    in the end dead-letters) alone; `attempt` counts this sink's tries.
    """

    sink: str
    result: ResultEvent | None = None
    notice: JobNotice | None = None
    attempt: int = 1
    schema: str = "triggers.notification.v1"

    @property
    def job_id(self) -> str:
        """The job this delivery is about (receivers de-duplicate on it)."""
        event = self.result or self.notice
        return event.job_id if event is not None else ""


class _Schema(msgspec.Struct):
    schema: str = "triggers.result.v1"


_command_decoder = msgspec.json.Decoder(CommandEnvelope)
_result_decoder = msgspec.json.Decoder(ResultEvent)


_notice_decoder = msgspec.json.Decoder(JobNotice)
_delivery_decoder = msgspec.json.Decoder(NotificationDelivery)
_schema_decoder = msgspec.json.Decoder(_Schema)


def encode(message: CommandEnvelope | ResultEvent | JobNotice | NotificationDelivery) -> bytes:
    """JSON bytes of a message."""
    return encode_json(message)


def decode_command(data: bytes) -> CommandEnvelope:
    """Decode and validate a command; raises `msgspec.ValidationError` or `DecodeError`."""
    return _command_decoder.decode(data)


def decode_result(data: bytes) -> ResultEvent:
    """Decode and validate a result event."""
    return _result_decoder.decode(data)


def decode_delivery(data: bytes) -> NotificationDelivery:
    """Decode a notification delivery."""
    return _delivery_decoder.decode(data)


def decode_job_event(data: bytes) -> ResultEvent | JobNotice:
    """A result event or a progress notice, told apart by their `schema` field."""
    if _schema_decoder.decode(data).schema == "triggers.notice.v1":
        return _notice_decoder.decode(data)
    return _result_decoder.decode(data)
