"""From a recognised event and a trigger to a command, or the reason there is none.

Pure: no I/O, no clock. The caller claims the returned de-duplication keys.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from gateway.sources._event import Alert, ImagePush, Parsed, UnusableBody
from shared.images import (
    familiar_repository,
    image_reference,
    normalize_repository,
    same_repository,
)
from shared.messages import Command, Origin, Redeploy, Scale
from shared.triggers import Trigger, TriggerOptions

__all__ = ["Ignored", "Planned", "plan_event", "tag_allowed"]

Direction = Literal["scale_in", "scale_out"]
_OPPOSITE: dict[Direction, Direction] = {"scale_in": "scale_out", "scale_out": "scale_in"}


@dataclass(frozen=True)
class Ignored:
    """A valid event that this trigger does not act on, and why (answered with 200)."""

    reason: str
    job_id: str | None = None  # the earlier job, when the event repeats one
    forget: tuple[str, ...] = ()  # keys this event supersedes (a resolve re-arms firing)


@dataclass(frozen=True)
class Planned:
    """The command an event makes, its origin, and the keys that make it act once."""

    command: Command
    origin: Origin
    claims: tuple[tuple[str, float], ...]  # (key, seconds to remember it)
    forget: tuple[str, ...] = ()
    summary: dict[str, object] = field(default_factory=dict)


def tag_allowed(tag: str | None, options: TriggerOptions) -> bool:
    """Whether a pushed tag passes the trigger's glob (``--tags``) or range (``--semver``)."""
    if not options.tags and not options.semver:
        return True
    if tag is None:
        return False  # a push by digest only has no tag to match a filter
    if options.tags:
        return any(fnmatch.fnmatchcase(tag, p.strip()) for p in options.tags.split(","))
    assert options.semver is not None  # noqa: S101 - one of the two is set, checked above
    try:
        version = Version(tag)
    except InvalidVersion:
        return False
    spec = SpecifierSet(options.semver)
    # Pre-releases deploy only when the range itself names one (">=2.0.0rc1").
    return spec.contains(version, prereleases=bool(spec.prereleases))


def _tag_rank(push: ImagePush) -> tuple[int, Version]:
    # Of several tags of one image, deploy the most specific: the highest version, then
    # any named tag, then "latest".
    if push.tag is None:
        return (-1, Version("0"))
    try:
        return (2, Version(push.tag))
    except InvalidVersion:
        return (0 if push.tag == "latest" else 1, Version("0"))


def _choose(pushes: list[ImagePush]) -> ImagePush:
    digest = pushes[-1].digest  # the latest image in the notification wins
    return max((p for p in pushes if p.digest == digest), key=_tag_rank)


def _push_key(trigger: Trigger, push: ImagePush) -> str:
    repository = normalize_repository(push.repository)
    if push.digest:
        return f"push:{trigger.id}:{repository}@{push.digest}"
    return f"push:{trigger.id}:{repository}:{push.tag}:{push.pushed_at or ''}"


def _plan_pushes(trigger: Trigger, parsed: Parsed, label: str, window: float) -> Planned | Ignored:
    if trigger.action != "redeploy":
        return Ignored(
            f"{label} image pushes redeploy; this trigger scales "
            "(create a redeploy trigger with --image-update)"
        )
    pushes = [p for p in parsed.pushes if p.action == "push"]
    if not pushes:
        kinds = ", ".join(sorted({p.kind or p.action for p in parsed.pushes}))
        return Ignored(f"{label} {kinds} event: only a push deploys")
    options = trigger.options
    if options.image:
        bound = [p for p in pushes if same_repository(p.repository, options.image)]
        if not bound:
            seen = ", ".join(sorted({familiar_repository(p.repository) for p in pushes}))
            return Ignored(f"pushed repository {seen} is not this trigger's {options.image}")
        pushes = bound
    allowed = [p for p in pushes if tag_allowed(p.tag, options)]
    if not allowed:
        tags = ", ".join(sorted({p.tag or "(digest only)" for p in pushes}))
        rule = f"--tags {options.tags}" if options.tags else f"--semver {options.semver}"
        return Ignored(f"tag {tags} does not match this trigger's {rule}")
    chosen = _choose(allowed)
    repository = familiar_repository(chosen.repository)
    try:
        image = image_reference(repository, chosen.tag, chosen.digest)
    except ValueError as exc:
        raise UnusableBody(str(exc)) from None
    if trigger.image_update and not chosen.tag and not chosen.digest:
        msg = f"{label} push names neither a tag nor a digest"
        raise UnusableBody(msg)
    command = Redeploy(image=image, only_matching=True) if trigger.image_update else Redeploy()
    summary: dict[str, object] = {"source": parsed.source, "repository": repository}
    if chosen.tag:
        summary["tag"] = chosen.tag
    if trigger.image_update:
        summary["image"] = image
    origin = Origin(
        source=parsed.source,
        event_id=parsed.event_id,
        repository=repository,
        tag=chosen.tag,
        digest=chosen.digest,
    )
    return Planned(
        command=command,
        origin=origin,
        claims=((_push_key(trigger, chosen), window),),
        summary=summary,
    )


def _alert_key(trigger: Trigger, alert: Alert, status: str) -> str:
    return f"alert:{trigger.id}:{status}:{alert.key}"


def _plan_alert(
    trigger: Trigger,
    parsed: Parsed,
    alert: Alert,
    *,
    direction: Direction | None,
    step: int | None,
    cooldown: float,
) -> Planned | Ignored:
    options = trigger.options
    name = alert.name or alert.key
    # A resolve ends the incident: the next firing of the group acts again at once.
    forget = (_alert_key(trigger, alert, "firing"),) if alert.status == "resolved" else ()
    command: Command
    if alert.status == "firing":
        if trigger.action == "redeploy":
            command = Redeploy()
        else:
            command = Scale(direction=direction or "scale_out", step=step or options.step or 1)
    elif trigger.action == "scale" and options.scale_in_on_resolve:
        command = Scale(
            direction=_OPPOSITE[direction or "scale_out"], step=step or options.step or 1
        )
    else:
        return Ignored(
            f"alert {name} resolved; only firing alerts act"
            + (
                " unless the trigger has --scale-in-on-resolve" if trigger.action == "scale" else ""
            ),
            forget=forget,
        )
    origin = Origin(
        source=parsed.source,
        event_id=parsed.event_id,
        alert=alert.name,
        alert_status=alert.status,
        alert_key=alert.key,
    )
    return Planned(
        command=command,
        origin=origin,
        claims=((_alert_key(trigger, alert, alert.status), cooldown),),
        forget=forget,
        summary={"source": parsed.source, "alert": alert.name, "alert_status": alert.status},
    )


def plan_event(
    trigger: Trigger,
    parsed: Parsed,
    label: str,
    *,
    direction: Direction | None,
    step: int | None,
    push_window: float,
    alert_cooldown: float,
) -> Planned | Ignored:
    """The command `parsed` makes for `trigger`, or why it makes none."""
    if parsed.alert is not None:
        cooldown = trigger.options.cooldown
        return _plan_alert(
            trigger,
            parsed,
            parsed.alert,
            direction=direction,
            step=step,
            cooldown=alert_cooldown if cooldown is None else cooldown,
        )
    if parsed.pushes:
        return _plan_pushes(trigger, parsed, label, push_window)
    return Ignored(parsed.note or f"{label} event with nothing to act on")
