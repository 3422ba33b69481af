"""From a recognised event and a trigger to a command, or the reason there is none.

Pure: no I/O, no clock. The caller claims the returned de-duplication keys.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from gateway.sources._event import Alert, ImagePush, Parsed, UnusableBody
from shared.images import (
    familiar_repository,
    image_reference,
    normalize_repository,
    parse_image,
    same_repository,
)
from shared.messages import Command, Direction, Origin, Redeploy, Scale
from shared.triggers import Trigger, TriggerOptions

__all__ = ["Ignored", "Planned", "is_artifact_tag", "plan_event", "tag_allowed"]

_OPPOSITE: dict[Direction, Direction] = {"scale_in": "scale_out", "scale_out": "scale_in"}
_ARTIFACT_TAG = re.compile(r"^sha256-[0-9a-f]{64}(?:\.[a-z0-9]+)*$")


@dataclass(frozen=True)
class Ignored:
    """A valid event that this trigger does not act on, and why (answered with 200).

    `reason` is a stable code for scripts, logs and the audit trail; `detail` says it
    in words.
    """

    reason: str
    detail: str
    job_id: str | None = None  # the earlier job, when the event repeats one
    forget: tuple[str, ...] = ()  # keys this event supersedes (a resolve re-arms firing)


@dataclass(frozen=True)
class Planned:
    """The command an event makes, its origin, and the keys that make it act once."""

    command: Command
    origin: Origin
    claims: tuple[tuple[str, float], ...]  # (key, seconds to remember it)
    forget: tuple[str, ...] = ()
    # Keys that must have been recorded for this to act (a resolve needs its episode).
    requires: tuple[str, ...] = ()
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
    except (InvalidVersion, ValueError):  # ValueError: a number past int()'s digit limit
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
    except (InvalidVersion, ValueError):  # ValueError: a number past int()'s digit limit
        return (0 if push.tag == "latest" else 1, Version("0"))


def _choose(pushes: list[ImagePush]) -> ImagePush:
    digest = pushes[-1].digest  # the latest image in the notification wins
    return max((p for p in pushes if p.digest == digest), key=_tag_rank)


def _push_key(trigger: Trigger, push: ImagePush) -> str:
    repository = normalize_repository(push.repository) if push.host_known else push.repository
    if push.digest:
        return f"push:{trigger.id}:{repository}@{push.digest}"
    return f"push:{trigger.id}:{repository}:{push.tag}:{push.pushed_at or ''}"


def is_artifact_tag(tag: str | None) -> bool:
    """Whether a tag names a signature, attestation or SBOM rather than a release.

    Cosign stores them as ``sha256-<hex>.sig`` / ``.att`` / ``.sbom``, and registries
    without the OCI 1.1 referrers API keep referrers under ``sha256-<hex>``.
    """
    return tag is not None and _ARTIFACT_TAG.match(tag) is not None


def _bound(push: ImagePush, image: str) -> bool:
    """Whether a push is of the trigger's --image repository (any spelling the sender uses)."""
    if not push.host_known:
        # The sender names only the path (Nexus): --image carries the host.
        return normalize_repository(image).partition("/")[2] == push.repository.lower().strip("/")
    return any(same_repository(r, image) for r in (push.repository, *push.aliases))


def _releases(parsed: Parsed, label: str) -> list[ImagePush] | Ignored:
    """The pushes that can be releases: tagged, and not signatures or attestations."""
    pushes = [p for p in parsed.pushes if p.action == "push"]
    if not pushes:
        kinds = ", ".join(sorted({p.kind or p.action for p in parsed.pushes}))
        return Ignored("not_a_push", f"{label} {kinds} event: only a push deploys")
    releases = [p for p in pushes if not is_artifact_tag(p.tag)]
    if not releases:
        tags = ", ".join(sorted({p.tag or "" for p in pushes}))
        return Ignored(
            "artifact_tag",
            f"tag {tags} is a signature, attestation or referrer of an image, not a release",
        )
    tagged = [p for p in releases if p.tag]
    if not tagged:
        # A platform manifest inside a multi-platform index, a referrer, or an image
        # pushed by digest: the tagged push (the index) that follows is the release.
        return Ignored(
            "digest_only",
            f"{label} push by digest only (no tag): a platform manifest, a signature or "
            "attestation, or an untagged image; only a tagged push deploys",
        )
    return tagged


def _plan_pushes(trigger: Trigger, parsed: Parsed, label: str, window: float) -> Planned | Ignored:
    if trigger.action != "redeploy":
        return Ignored(
            "not_for_this_action",
            f"{label} image pushes redeploy; this trigger scales "
            "(create a redeploy trigger with --image-update)",
        )
    tagged = _releases(parsed, label)
    if isinstance(tagged, Ignored):
        return tagged
    options = trigger.options
    if options.image:
        bound = [p for p in tagged if _bound(p, options.image)]
        if not bound:
            seen = ", ".join(sorted({_shown(p) for p in tagged}))
            return Ignored(
                "other_repository",
                f"pushed repository {seen} is not this trigger's {options.image}",
            )
        tagged = bound
    elif not all(p.host_known for p in tagged) and trigger.image_update:
        msg = (
            f"{label} names the repository path but not the registry host; "
            "bind the trigger to the image with --image HOST/PATH"
        )
        raise UnusableBody(msg)
    allowed = [p for p in tagged if tag_allowed(p.tag, options)]
    if not allowed:
        tags = ", ".join(sorted({p.tag or "" for p in tagged}))
        rule = f"--tags {options.tags}" if options.tags else f"--semver {options.semver}"
        return Ignored("tag_filtered", f"tag {tags} does not match this trigger's {rule}")
    chosen = _choose(allowed)
    # The trigger's own spelling when it is bound: the sender's may be an alias, or lack
    # the host; both name the same repository.
    repository = familiar_repository(
        parse_image(options.image).repository if options.image else chosen.repository
    )
    try:
        image = image_reference(repository, chosen.tag, chosen.digest)
    except ValueError as exc:
        raise UnusableBody(str(exc)) from None
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


def _shown(push: ImagePush) -> str:
    return familiar_repository(push.repository) if push.host_known else push.repository


def _alert_key(trigger: Trigger, alert: Alert, status: str) -> str:
    return f"alert:{trigger.id}:{status}:{alert.key}"


# How long an open episode (a scale-out awaiting its resolve) is remembered: an alert
# firing longer than this would scale out once more.
EPISODE_TTL = 30 * 24 * 3600.0


def _plan_alert(
    trigger: Trigger,
    parsed: Parsed,
    alert: Alert,
    *,
    direction: Direction | None,
    step: int | None,
    cooldown: float,
) -> Planned | Ignored:
    """A firing acts, a resolve re-arms the group (or closes the episode it opened).

    With --scale-in-on-resolve a group's firing episode (first firing to resolve) scales
    out once, however often it is repeated or grows, and its resolve scales in by the
    same step once: replicas always come back to where the episode started. A resolve
    with no open episode (its firing was held back, or is older than `EPISODE_TTL`) does
    nothing. Without it, a group acts once per cooldown and a resolve re-arms it.
    """
    options = trigger.options
    name = alert.name or alert.key
    firing_key = _alert_key(trigger, alert, "firing")
    resolved_key = _alert_key(trigger, alert, "resolved")
    episodes = trigger.action == "scale" and options.scale_in_on_resolve
    amount = step or options.step or 1
    command: Command
    requires: tuple[str, ...] = ()
    if alert.status == "firing":
        if trigger.action == "redeploy":
            command = Redeploy()
        else:
            command = Scale(direction=direction or "scale_out", step=amount)
        # A new firing re-arms the resolve, so a flapping group closes every episode.
        claims = ((firing_key, EPISODE_TTL if episodes else cooldown),)
        forget = (resolved_key,) if episodes else ()
    elif episodes:
        command = Scale(direction=_OPPOSITE[direction or "scale_out"], step=amount)
        claims, forget, requires = ((resolved_key, cooldown),), (firing_key,), (firing_key,)
    else:
        # A resolve ends the incident: the next firing of the group acts again at once.
        return Ignored(
            "alert_resolved",
            f"alert {name} resolved; only firing alerts act"
            + (
                " unless the trigger has --scale-in-on-resolve" if trigger.action == "scale" else ""
            ),
            forget=(firing_key,),
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
        claims=claims,
        forget=forget,
        requires=requires,
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
    return Ignored("nothing_to_act_on", parsed.note or f"{label} event with nothing to act on")
