"""Registry pushes and monitoring alerts posted to a trigger: recognise, authenticate, plan.

One module per sender family parses a body into a typed `Parsed` event (pure functions
of headers, content type and bytes); `plan` turns it into a command for the trigger;
`inspect_call` is the one entry point `gateway/hook.py` calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.claims import Reservation, earlier_job
from gateway.errors import ApiError
from gateway.outcomes import Ignored, Progress
from gateway.recent import PENDING, RecentEvents
from gateway.sources._event import (
    Alert,
    Headers,
    ImagePush,
    Parsed,
    UnrecognisedBody,
    UnusableBody,
)
from gateway.sources.auth import (
    github_signature,
    header_secret,
    presented_secret,
    verify_signature,
)
from gateway.sources.detect import SOURCES, parse_event
from gateway.sources.plan import EPISODE_TTL, Planned, plan_event
from gateway.sources.plan import Ignored as NotActedOn
from shared.messages import Command, Direction, Origin
from shared.settings import Settings
from shared.triggers import Trigger

__all__ = [
    "SOURCES",
    "Alert",
    "EventCall",
    "Ignored",
    "ImagePush",
    "Parsed",
    "RecentEvents",
    "UnrecognisedBody",
    "UnusableBody",
    "github_signature",
    "header_secret",
    "inspect_call",
    "parse_event",
    "presented_secret",
]

# How long a delivery id is remembered against replays (bounded by the cache's size).
_DELIVERY_TTL = 24 * 3600.0


@dataclass(frozen=True)
class EventCall:
    """A command made from a body; its keys are claimed in the call's `Reservation`."""

    command: Command
    origin: Origin
    summary: dict[str, object]


async def inspect_call(
    trigger: Trigger,
    headers: Headers,
    body: bytes,
    *,
    source: str | None,
    direction: Direction | None,
    step: int | None,
    secret_in_query: bool,
    settings: Settings,
    reservation: Reservation,
    progress: Progress,
) -> EventCall | Ignored | None:
    """Authenticate beyond the secret, then read the body.

    Returns None for a plain call (no body, or ``source=plain``), an `EventCall` whose
    command replaces the plain one, or `Ignored`. Raises `ApiError` (400, 401, 409, 422)
    when the call must be refused. Keys are claimed in `reservation`; the body's source
    is noted in `progress` as soon as it is recognised.
    """
    await _verify(
        trigger,
        headers,
        body,
        secret_in_query=secret_in_query,
        settings=settings,
        reservation=reservation,
    )
    if source == "plain" or (source is None and not body.strip()):
        return None
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    try:
        parsed = parse_event(headers, content_type, body, source)
    except (UnrecognisedBody, UnusableBody) as exc:
        code = "unrecognised_body" if isinstance(exc, UnrecognisedBody) else "unusable_body"
        raise ApiError(422, code, str(exc)) from None
    progress.event_source = parsed.source
    return await _plan(
        trigger,
        parsed,
        direction=direction,
        step=step,
        settings=settings,
        reservation=reservation,
    )


async def _verify(
    trigger: Trigger,
    headers: Headers,
    body: bytes,
    *,
    secret_in_query: bool,
    settings: Settings,
    reservation: Reservation,
) -> None:
    """A header-only secret, and the trigger's signature scheme (a replay claims its key)."""
    options = trigger.options
    if secret_in_query and options.header_secret_only:
        raise ApiError(
            400,
            "query_secret_refused",
            "this trigger takes its secret only in the X-Trigger-Secret or "
            "Authorization: Bearer header; the secret has been in a URL, so rotate it",
        )
    await verify_signature(
        options,
        trigger.id,
        headers,
        body,
        claims=reservation,
        tolerance=settings.signature_tolerance,
        jwks_url=settings.oidc_jwks_url,
    )


async def _plan(
    trigger: Trigger,
    parsed: Parsed,
    *,
    direction: Direction | None,
    step: int | None,
    settings: Settings,
    reservation: Reservation,
) -> EventCall | Ignored:
    """A recognised event: a delivery seen before, an event not acted on, or its command."""
    label = SOURCES[parsed.source].label
    recent = reservation.recent
    delivery_key = f"delivery:{trigger.id}:{parsed.source}:{parsed.event_id}"
    earlier = earlier_job(await recent.seen(delivery_key)) if parsed.event_id else None
    if earlier is not None and not earlier.unconfirmed:
        return Ignored(
            "duplicate_delivery",
            f"{label} delivery {parsed.event_id} was already received",
            earlier.job_id,
        )
    try:
        plan = plan_event(
            trigger,
            parsed,
            label,
            direction=direction,
            step=step,
            push_window=settings.push_dedupe_window,
            alert_cooldown=settings.alert_cooldown,
        )
    except UnusableBody as exc:
        raise ApiError(422, "unusable_body", str(exc)) from None
    if isinstance(plan, NotActedOn):
        for key in plan.forget:
            await recent.forget(key)
        return Ignored(plan.reason, plan.detail, plan.job_id)
    return await _claim(
        recent, reservation, plan, delivery_key if parsed.event_id is not None else None
    )


async def _claim(
    recent: RecentEvents,
    claims: Reservation,
    plan: Planned,
    delivery_key: str | None,
) -> EventCall | Ignored:
    for key in plan.requires:
        if await recent.seen(key) in (None, PENDING):
            return Ignored(
                "no_open_episode",
                "the alert resolved, but no scale-out of this firing episode is on record "
                "(it was held back, is still in progress, or is older than the episode memory); "
                "nothing to undo",
            )
    keys = plan.claims + (((delivery_key, _DELIVERY_TTL),) if delivery_key else ())
    for key, ttl in keys:
        found = await claims.claim(key, ttl)
        if found is None or found.unconfirmed:
            continue  # claimed, or taken over as the retry of an unconfirmed job
        for done, _ in keys:
            await claims.drop(done)
        earlier = found.job_id
        alert = key.startswith("alert:")
        if found.pending:
            what = "alert" if alert else "image"
            return Ignored(
                "in_progress",
                f"the same {what} is being acted on by a call still in progress",
            )
        if alert and ":firing:" in key and ttl >= EPISODE_TTL:
            return Ignored(
                "alert_repeat",
                "this alert group already scaled out in its current firing episode; "
                "it acts again after it resolves",
                earlier,
            )
        if alert:
            return Ignored(
                "alert_repeat",
                f"the same alert already acted within the last {ttl:.0f} s",
                earlier,
            )
        return Ignored(
            "duplicate_image",
            f"the same image already deployed within the last {ttl:.0f} s",
            earlier,
        )
    claims.supersedes = plan.forget
    return EventCall(command=plan.command, origin=plan.origin, summary=plan.summary)
