"""What real pushes do: digest-only pushes, signatures and attestations, multi-platform
indexes, alert episodes, signed senders, and the log line of an ignored call.

Through HTTP and the real broker, on the senders' sample payloads changed one field at a
time (each test says which).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from shared.broker import AmqpBus
from shared.messages import Redeploy, Scale
from shared.policy import PolicyChanges
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from shared.triggers import TriggerOptions
from tests.support.broker import published
from tests.support.gateways import Gateway, running_gateways
from tests.test_event_calls import JSON, image_trigger, post
from tests.test_sources import fixture, mutated, raw

pytestmark = pytest.mark.unit

REGISTRY = {"Content-Type": "application/vnd.docker.distribution.events.v2+json"}
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _event(n: int, media_type: str, digest: str, tag: str | None) -> dict[str, Any]:
    target: dict[str, Any] = {"mediaType": media_type, "digest": digest, "repository": "team/api"}
    if tag:
        target["tag"] = tag
    return {
        "id": f"evt-{n}",
        "timestamp": f"2026-12-07T00:00:0{n}Z",
        "action": "push",
        "target": target,
        "request": {"host": "127.0.0.1:5000"},
    }


def _digest(c: str) -> str:
    return "sha256:" + c * 64


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("harbor_push_cloudevents.json", {"Content-Type": "application/cloudevents+json"}),
        ("github_registry_package_published.json", {**JSON, "X-GitHub-Event": "registry_package"}),
        ("github_package_published.json", {**JSON, "X-GitHub-Event": "package"}),
        ("acr_push.json", JSON),
        # The distribution docs' envelope predates tags in events: its push is by digest.
        ("distribution_push.json", REGISTRY),
    ],
)
async def test_push_by_digest_only_never_deploys(
    gateway: Gateway, store: SqliteTriggerStore, name: str, headers: dict[str, str]
) -> None:
    """A push with no tag (Harbor's, GitHub's and distribution's own samples; ACR's with the
    tag removed) is answered 200 digest_only and publishes nothing."""
    trigger, secret = await image_trigger(store, None)
    body = mutated(name, ("target", "tag"), None) if name == "acr_push.json" else raw(name)
    status, answer = await post(gateway, trigger, secret, body, headers)
    assert (status, answer["reason"]) == (200, "digest_only"), answer
    assert await published(gateway) == []


@pytest.mark.parametrize("suffix", [".sig", ".att", ""])
async def test_signature_and_attestation_tags_are_artifacts(
    gateway: Gateway, store: SqliteTriggerStore, suffix: str
) -> None:
    """ACR's sample retagged sha256-<hex>.sig/.att (cosign) or sha256-<hex> (referrers):
    200 artifact_tag, nothing published, even on a trigger without --image-update."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    tag = "sha256-" + "ab" * 32 + suffix
    status, answer = await post(
        gateway, trigger, secret, mutated("acr_push.json", ("target", "tag"), tag)
    )
    assert (status, answer["reason"]) == (200, "artifact_tag"), answer
    assert await published(gateway) == []


async def test_multi_platform_push_deploys_once_to_the_index(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """Two platform manifests by digest, then the index by tag (as the registry notifies a
    multi-platform push, in one envelope or one by one): one redeploy, to tag@index digest."""
    trigger, secret = await image_trigger(store, "127.0.0.1:5000/team/api")
    events = [
        _event(1, MANIFEST, _digest("1"), None),
        _event(2, MANIFEST, _digest("2"), None),
        _event(3, INDEX, _digest("9"), "1.4.2"),
    ]
    answers = []
    for event in events:
        body = json.dumps({"events": [event]}).encode()
        answers.append(await post(gateway, trigger, secret, body, REGISTRY))
    assert [(s, a.get("reason")) for s, a in answers] == [
        (200, "digest_only"),
        (200, "digest_only"),
        (202, None),
    ]
    (command,) = await published(gateway)
    assert command.command == Redeploy(
        image=f"127.0.0.1:5000/team/api:1.4.2@{_digest('9')}", only_matching=True
    )
    # The same three in one envelope, under a new digest: again one redeploy.
    events = [
        _event(4, MANIFEST, _digest("3"), None),
        _event(5, MANIFEST, _digest("4"), None),
        _event(6, INDEX, _digest("8"), "1.4.3"),
    ]
    status, answer = await post(
        gateway, trigger, secret, json.dumps({"events": events}).encode(), REGISTRY
    )
    assert status == 202, answer
    (command,) = await published(gateway)
    assert command.command == Redeploy(
        image=f"127.0.0.1:5000/team/api:1.4.3@{_digest('8')}", only_matching=True
    )


async def test_ignored_call_logs_its_outcome_and_reason(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """The gateway.request line of an ignored call says outcome=ignored and the reason code."""
    trigger, secret = await image_trigger(store, "acme/other")
    with capture_logs() as logs:
        status, answer = await post(gateway, trigger, secret, raw("dockerhub_push.json"))
    assert (status, answer["reason"]) == (200, "other_repository")
    (line,) = [e for e in logs if e["event"] == "gateway.request"]
    assert (line["outcome"], line["reason"]) == ("ignored", "other_repository")
    assert "acme/other" in line["detail"]


async def test_nexus_needs_the_host_in_image_and_checks_its_signature(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """Nexus names no host: a trigger without --image refuses it (422); --signature nexus
    checks X-Nexus-Webhook-Signature (hex HMAC-SHA1), as flux-recv's fixture key signs it."""
    body = raw("nexus_component_created.json")
    headers = {**JSON, "X-Nexus-Webhook-Id": "rm:repository:component"}
    unbound, unbound_secret = await image_trigger(store, None)
    status, answer = await post(gateway, unbound, unbound_secret, body, headers)
    assert (status, answer["error"]) == (422, "unusable_body")
    assert "--image HOST/PATH" in answer["detail"]
    key = "gk0qp4u98xy0vntojv81i8zcjr4zw7xd6c4ugzad"
    trigger, secret = await image_trigger(
        store, "127.0.0.1:8082/app1/alpine", signature="nexus", signing_secret=key
    )
    wrong = {**headers, "X-Nexus-Webhook-Signature": "0" * 40}
    status, answer = await post(gateway, trigger, secret, body, wrong)
    assert (status, answer["error"]) == (401, "bad_signature")
    good = hmac.new(key.encode(), body, hashlib.sha1).hexdigest()
    status, answer = await post(
        gateway, trigger, secret, body, {**headers, "X-Nexus-Webhook-Signature": good}
    )
    assert status == 202, answer
    (command,) = await published(gateway)
    assert command.command == Redeploy(image="127.0.0.1:8082/app1/alpine:3.4", only_matching=True)


async def test_jfrog_signature(gateway: Gateway, store: SqliteTriggerStore) -> None:
    """--signature jfrog: X-JFrog-Event-Auth is the hex HMAC-SHA256 of the body."""
    trigger, secret = await image_trigger(
        store,
        "example.jfrog.io/docker-remote-cache/library/ubuntu",
        signature="jfrog",
        signing_secret="j-key-0123456789ab",
    )
    body = raw("jfrog_docker_pushed.json")
    status, answer = await post(gateway, trigger, secret, body)
    assert (status, answer["error"]) == (401, "missing_signature")
    good = hmac.new(b"j-key-0123456789ab", body, hashlib.sha256).hexdigest()
    status, answer = await post(
        gateway, trigger, secret, body, {**JSON, "X-JFrog-Event-Auth": good}
    )
    assert status == 202, answer


async def test_cdevents_and_generic_bodies_deploy(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A CDEvent in binary mode (ce-* headers, Harbor's CDEvent as the body) and the generic
    body both redeploy with tag@digest."""
    trigger, secret = await image_trigger(store, None)
    cdevent = json.dumps(fixture("cdevents_harbor_structured.json")["data"]).encode()
    binary = {
        **JSON,
        "ce-specversion": "1.0",
        "ce-type": "dev.cdevents.artifact.published.0.1.1",
        "ce-id": "b-1",
        "ce-source": "/projects/1/webhook/policies/3",
    }
    status, answer = await post(gateway, trigger, secret, cdevent, binary)
    assert status == 202, answer
    generic = json.dumps(
        {"image": "127.0.0.1:5000/team/api", "tag": "2.0.0", "digest": _digest("c"), "id": "ci-1"}
    ).encode()
    status, answer = await post(gateway, trigger, secret, generic)
    assert status == 202, answer
    status, again = await post(gateway, trigger, secret, generic)
    assert (status, again["reason"]) == (200, "duplicate_delivery")
    images = [c.command for c in await published(gateway)]
    assert images == [
        Redeploy(
            image="harbor.dev/library/busybox:v1.0@sha256:dde8e930c7b6a490f728e66292bc9bce42efc9bbb5278bae40e4f30f6e00fe8c",
            only_matching=True,
        ),
        Redeploy(image=f"127.0.0.1:5000/team/api:2.0.0@{_digest('c')}", only_matching=True),
    ]


async def test_flapping_alert_always_returns_to_where_the_episode_started(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """--scale-in-on-resolve over fire/repeat/grow/resolve/fire/repeat/resolve/resolve: one
    scale-out per episode, one scale-in per resolve, with no cooldown at all."""
    trigger, secret = await store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        options=TriggerOptions(step=2, scale_in_on_resolve=True, cooldown=0),
    )
    firing = raw("alertmanager_firing.json")
    grown = fixture("alertmanager_firing.json")
    grown["alerts"].append({**grown["alerts"][0], "fingerprint": "ffff000011112222"})
    resolved = mutated("alertmanager_firing.json", ("status",), "resolved")
    sequence = [
        firing,
        firing,
        json.dumps(grown).encode(),
        resolved,
        firing,
        firing,
        resolved,
        resolved,
    ]
    answers = [await post(gateway, trigger, secret, body) for body in sequence]
    assert [(s, a.get("reason")) for s, a in answers] == [
        (202, None),
        (200, "alert_repeat"),
        (200, "alert_repeat"),
        (202, None),
        (202, None),
        (200, "alert_repeat"),
        (202, None),
        (200, "no_open_episode"),
    ]
    commands = [c.command for c in await published(gateway)]
    assert commands == [
        Scale(direction="scale_out", step=2),
        Scale(direction="scale_in", step=2),
        Scale(direction="scale_out", step=2),
        Scale(direction="scale_in", step=2),
    ]


async def test_resolve_of_a_firing_the_policy_held_back_does_nothing(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A firing held back by the trigger's cooldown opens no episode, so its resolve scales
    nothing in: the service never goes below where it was."""
    trigger, secret = await store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        options=TriggerOptions(scale_in_on_resolve=True),
        policy=PolicyChanges(cooldown=3600),
    )
    status, _ = await post(gateway, trigger, secret, b"", query="&type=scale_out&step=1")
    assert status == 202
    status, answer = await post(gateway, trigger, secret, raw("alertmanager_firing.json"))
    assert (status, answer["reason"]) == (200, "cooldown")
    resolved = mutated("alertmanager_firing.json", ("status",), "resolved")
    status, answer = await post(gateway, trigger, secret, resolved)
    assert (status, answer["reason"]) == (200, "no_open_episode")
    commands = [c.command for c in await published(gateway)]
    assert commands == [Scale(direction="scale_out", step=1)]


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        (PolicyChanges(enabled=False), "trigger_disabled"),
        (PolicyChanges(expires_in=1), "trigger_expired"),
        (PolicyChanges(rate_limit=1), "rate_limited"),
    ],
)
async def test_senders_that_retry_forever_get_200_when_the_trigger_holds_back(
    gateway: Gateway, store: SqliteTriggerStore, policy: PolicyChanges, reason: str
) -> None:
    """Docker Registry and Pub/Sub bodies to a disabled, expired or rate-limited trigger:
    200 ignored with the reason (dropped, so not retried); a Docker Hub body still gets the
    403/429."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="redeploy", policy=policy
    )
    if reason == "trigger_expired":
        await eventually_expired(store, trigger.id)
    if reason == "rate_limited":  # the one call a minute, used up by a plain call
        status, _ = await post(gateway, trigger, secret, b"")
        assert status == 202
    registry = json.dumps({"events": [_event(1, INDEX, _digest("5"), "3.0")]}).encode()
    pubsub = mutated("gar_pubsub_push.json", ("message", "messageId"), f"m-{reason}")
    for body, headers in ((registry, REGISTRY), (pubsub, JSON)):
        status, answer = await post(gateway, trigger, secret, body, headers)
        assert (status, answer["status"], answer["reason"]) == (200, "ignored", reason), answer
    status, answer = await post(gateway, trigger, secret, raw("dockerhub_push.json"))
    assert (status, answer["error"]) == ((429 if reason == "rate_limited" else 403), reason)
    assert len(await published(gateway)) == (1 if reason == "rate_limited" else 0)


async def eventually_expired(store: SqliteTriggerStore, trigger_id: str) -> None:
    """Wait until a one-second expiry has passed."""
    trigger = await store.get(trigger_id)
    assert trigger is not None
    assert trigger.expires_at is not None
    while datetime.now(UTC) < trigger.expires_at:
        await asyncio.sleep(0.05)


async def test_pubsub_push_with_the_subscription_oidc_token(
    settings: Settings, store: SqliteTriggerStore, bus: AmqpBus
) -> None:
    """--signature google-oidc: the push subscription's RS256 token (keys from a JWKS URL,
    here served by the test) must name the audience and service account; the URL secret
    still comes first. A missing, foreign or expired token is 401."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    keys = web.Application()

    async def certs(_: web.Request) -> web.Response:
        return web.json_response({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]})

    keys.router.add_get("/certs", certs)
    server = TestServer(keys, host="127.0.0.1")
    await server.start_server()
    jwks = str(server.make_url("/certs"))

    def token(key: Any = private, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": "https://accounts.google.com",
            "aud": "https://triggers.example/pubsub",
            "email": "pusher@project.iam.gserviceaccount.com",
            "email_verified": True,
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})

    trigger, secret = await image_trigger(
        store,
        "us.gcr.io/am/am.kebab.api",
        signature="google-oidc",
        oidc_audience="https://triggers.example/pubsub",
        oidc_email="pusher@project.iam.gserviceaccount.com",
    )
    body = raw("gar_pubsub_push.json")
    try:
        async with running_gateways(settings.with_(oidc_jwks_url=jwks), store, bus, 1) as (
            gateway,
        ):
            refused = [
                await post(gateway, trigger, secret, body, {**JSON, "Authorization": f"Bearer {t}"})
                for t in (
                    "not-a-jwt",
                    token(other),
                    token(aud="https://elsewhere"),
                    token(email="intruder@example.iam.gserviceaccount.com"),
                    token(exp=int(time.time()) - 60, iat=int(time.time()) - 700),
                )
            ]
            assert [(s, a["error"]) for s, a in refused] == [(401, "bad_token")] * 5
            status, answer = await post(gateway, trigger, secret, body)
            assert (status, answer["error"]) == (401, "missing_token")
            status, answer = await post(
                gateway, trigger, secret, body, {**JSON, "Authorization": f"Bearer {token()}"}
            )
            assert status == 202, answer
            status, answer = await post(
                gateway, trigger, "0" * 64, body, {**JSON, "Authorization": f"Bearer {token()}"}
            )
            assert (status, answer["error"]) == (403, "forbidden")
    finally:
        await server.close()
    (command,) = await published(gateway)
    assert command.command == Redeploy(image="us.gcr.io/am/am.kebab.api:test", only_matching=True)
