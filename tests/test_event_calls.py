"""Registry pushes and alerts POSTed to a trigger: the command published, ignored, or refused.

Through HTTP, on the in-process bus (a unit test's gateway remembers what it published).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from shared.messages import Redeploy, Scale
from shared.store import SqliteTriggerStore
from shared.triggers import Trigger, TriggerOptions
from tests.support.broker import published
from tests.support.gateways import Gateway
from tests.test_sources import DELETE, fixture, mutated, raw

pytestmark = pytest.mark.unit

JSON = {"Content-Type": "application/json"}
NPM_PACKAGE = {
    **fixture("github_package_published.json")["package"],
    "ecosystem": "npm",
    "package_type": "npm",
    "registry": {"type": "npm"},
}
HARBOR_DIGEST = "sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8"


async def post(
    gateway: Gateway,
    trigger: Trigger,
    secret: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> tuple[int, dict[str, Any]]:
    """POST a body to the trigger's URL; the status and the JSON answer."""
    url = gateway.call_url(trigger, secret) + query
    async with gateway.http.post(url, data=body, headers=headers or JSON) as response:
        return response.status, await response.json()


async def image_trigger(
    store: SqliteTriggerStore, image: str | None, **options: Any
) -> tuple[Trigger, str]:
    """A redeploy trigger with --image-update, bound to `image` when given."""
    return await store.create(
        cluster="demo",
        app="shop",
        action="redeploy",
        image_update=True,
        options=TriggerOptions(image=image, **options),
    )


# (fixture, headers, bound repository, image the command must carry)
PUSHES: list[tuple[str, dict[str, str], str, str]] = [
    (
        "dockerhub_push.json",
        JSON,
        "svendowideit/testhook",
        "svendowideit/testhook:latest",
    ),
    (
        "harbor_push_default.json",
        JSON,
        "hub.harbor.com/test-webhook/debian",
        f"hub.harbor.com/test-webhook/debian:latest@{HARBOR_DIGEST}",
    ),
    (
        "alibaba_push.json",
        JSON,
        "registry.cn-hangzhou.aliyuncs.com/namespace/repotest",
        "registry.cn-hangzhou.aliyuncs.com/namespace/repotest:latest@sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917",
    ),
    ("quay_push.json", JSON, "quay.io/dgangaia/test", "quay.io/dgangaia/test:latest"),
    ("quay_push_legacy.json", JSON, "quay.io/devtable/ubuntu", "quay.io/devtable/ubuntu:latest"),
    (
        "acr_push.json",
        JSON,
        "myregistry.azurecr.io/hello-world",
        "myregistry.azurecr.io/hello-world:v1@sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d",
    ),
    (
        "jfrog_docker_pushed.json",
        JSON,
        "example.jfrog.io/docker-remote-cache/library/ubuntu",
        "example.jfrog.io/docker-remote-cache/library/ubuntu:latest@sha256:35c4a2c15539c6c1e4e5fa4e554dac323ad0107d8eb5c582d6ff386b383b7dce",
    ),
    (
        # The subdomain access method names the same repository.
        "jfrog_docker_pushed.json",
        JSON,
        "docker-remote-cache.example.jfrog.io/library/ubuntu",
        "docker-remote-cache.example.jfrog.io/library/ubuntu:latest@sha256:35c4a2c15539c6c1e4e5fa4e554dac323ad0107d8eb5c582d6ff386b383b7dce",
    ),
    (
        "harbor1_push.json",
        JSON,
        "demo.goharbor.io/test123/alpine",
        "demo.goharbor.io/test123/alpine:3.10@sha256:e4355b66995c96b4b468159fc5c7e3540fcef961189ca13fee877798649f531a",
    ),
    ("gar_pubsub_push.json", JSON, "us.gcr.io/am/am.kebab.api", "us.gcr.io/am/am.kebab.api:test"),
    (
        "nexus_component_created.json",
        {**JSON, "X-Nexus-Webhook-Id": "rm:repository:component"},
        "127.0.0.1:8082/app1/alpine",
        "127.0.0.1:8082/app1/alpine:3.4",
    ),
    (
        "cdevents_harbor_structured.json",
        {"Content-Type": "application/cloudevents+json"},
        "harbor.dev/library/busybox",
        "harbor.dev/library/busybox:v1.0@sha256:dde8e930c7b6a490f728e66292bc9bce42efc9bbb5278bae40e4f30f6e00fe8c",
    ),
]


@pytest.mark.parametrize(
    ("name", "headers", "bound", "image"),
    PUSHES,
    ids=[f"{p[0]}:{p[2]}:{p[1]['Content-Type'].rsplit('.', 1)[-1]}" for p in PUSHES],
)
async def test_sample_push_publishes_a_redeploy_with_the_pushed_image(
    gateway: Gateway,
    store: SqliteTriggerStore,
    name: str,
    headers: dict[str, str],
    bound: str,
    image: str,
) -> None:
    """A vendor's sample push to a trigger bound to its repository redeploys with that image."""
    trigger, secret = await image_trigger(store, bound)
    status, body = await post(gateway, trigger, secret, raw(name), headers)
    assert status == 202, body
    assert body["event"]["image"] == image
    (command,) = await published(gateway)
    assert command.job_id == body["job_id"]
    assert command.command == Redeploy(image=image, only_matching=True)
    origin = command.source.origin
    assert origin is not None
    assert origin.source == body["event"]["source"]
    assert image.startswith(origin.repository or "?")


async def test_plain_redeploy_trigger_restarts_on_a_push(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A redeploy trigger without --image-update restarts on any push, image unchanged."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    status, body = await post(gateway, trigger, secret, raw("dockerhub_push.json"))
    assert status == 202, body
    (command,) = await published(gateway)
    assert command.command == Redeploy()
    assert command.source.origin is not None
    assert command.source.origin.tag == "latest"


@pytest.mark.parametrize(
    ("name", "headers", "step", "expected"),
    [
        ("alertmanager_firing.json", JSON, None, Scale(direction="scale_out", step=3)),
        ("grafana_firing.json", JSON, None, Scale(direction="scale_out", step=3)),
        ("alertmanager_firing.json", JSON, "&step=5", Scale(direction="scale_out", step=5)),
        ("grafana_firing.json", JSON, "&type=scale_in", Scale(direction="scale_in", step=3)),
    ],
)
async def test_firing_alert_scales_by_the_triggers_step(
    gateway: Gateway,
    store: SqliteTriggerStore,
    name: str,
    headers: dict[str, str],
    step: str | None,
    expected: Scale,
) -> None:
    """A firing alert scales out by --step; type= and step= in the URL override it."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web", options=TriggerOptions(step=3)
    )
    status, body = await post(gateway, trigger, secret, raw(name), headers, step or "")
    assert status == 202, body
    (command,) = await published(gateway)
    assert command.command == expected
    assert command.source.origin is not None
    assert command.source.origin.alert_status == "firing"
    assert command.source.origin.alert in ("ProbeFailure", "High memory usage")


async def test_firing_alert_redeploys_a_redeploy_trigger(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A firing Grafana alert on a redeploy trigger redeploys."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    status, body = await post(gateway, trigger, secret, raw("grafana_firing.json"))
    assert status == 202, body
    (command,) = await published(gateway)
    assert command.command == Redeploy()


async def test_resolve_scales_in_only_when_asked_and_rearms_the_alert(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """Resolved is ignored by default; with --scale-in-on-resolve it scales in, and re-arms."""
    plain, plain_secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web"
    )
    resolved = mutated("alertmanager_firing.json", ("status",), "resolved")
    status, body = await post(gateway, plain, plain_secret, resolved)
    assert (status, body["status"]) == (200, "ignored")
    assert "--scale-in-on-resolve" in body["detail"]

    trigger, secret = await store.create(
        cluster="demo",
        app="shop",
        action="scale",
        service="web",
        options=TriggerOptions(step=2, scale_in_on_resolve=True),
    )
    firing = raw("alertmanager_firing.json")
    assert (await post(gateway, trigger, secret, firing))[0] == 202
    assert (await post(gateway, trigger, secret, firing))[0] == 200  # same alert, cooldown
    assert (await post(gateway, trigger, secret, resolved))[0] == 202
    assert (await post(gateway, trigger, secret, firing))[0] == 202  # a new incident
    commands = await published(gateway)
    assert [c.command for c in commands] == [
        Scale(direction="scale_out", step=2),
        Scale(direction="scale_in", step=2),
        Scale(direction="scale_out", step=2),
    ]


# (fixture, change to it or None, headers, trigger options, words of the reason)
IGNORED: list[
    tuple[str, tuple[tuple[str | int, ...], Any] | None, dict[str, str], dict[str, Any], str]
] = [
    ("dockerhub_push.json", None, JSON, {"image": "acme/other"}, "not this trigger's acme/other"),
    (
        "dockerhub_push.json",
        None,
        JSON,
        {"image": "svendowideit/testhook", "tags": "v1.*"},
        "--tags v1.*",
    ),
    (
        "harbor_push_default.json",
        (("type",), "PULL_ARTIFACT"),
        JSON,
        {},
        "PULL_ARTIFACT event: only a push",
    ),
    (
        "harbor_push_cloudevents.json",
        (("type",), "harbor.artifact.deleted"),
        JSON,
        {},
        "only a push",
    ),
    (
        "github_registry_package_published.json",
        None,
        {**JSON, "X-GitHub-Event": "ping"},
        {},
        "GitHub ping",
    ),
    (
        "github_package_published.json",
        (("package",), NPM_PACKAGE),
        {**JSON, "X-GitHub-Event": "package"},
        {"image": "ghcr.io/codertocat/hello-world"},
        "not a container image",
    ),
    ("distribution_pull.json", None, JSON, {}, "pull event: only a push"),
    (
        "alibaba_push.json",
        None,
        JSON,
        {"image": "registry.cn-hangzhou.aliyuncs.com/x/y"},
        "not this trigger's",
    ),
    ("quay_push.json", None, JSON, {"semver": ">=1.2,<2"}, "--semver >=1.2,<2"),
    ("alertmanager_firing.json", (("status",), "resolved"), JSON, {}, "resolved"),
    ("grafana_firing.json", (("status",), "resolved"), JSON, {}, "resolved"),
]


@pytest.mark.parametrize(
    ("name", "change", "headers", "options", "reason"),
    IGNORED,
    ids=[f"{i[0]}:{i[4][:24]}" for i in IGNORED],
)
async def test_valid_event_not_for_this_trigger_is_ignored_with_a_reason(
    gateway: Gateway,
    store: SqliteTriggerStore,
    name: str,
    change: tuple[tuple[str | int, ...], Any] | None,
    headers: dict[str, str],
    options: dict[str, Any],
    reason: str,
) -> None:
    """Pulls, other repositories, filtered tags, pings and resolved alerts: 200, nothing published."""
    alert = name.startswith(("alertmanager", "grafana"))
    trigger, secret = (
        await store.create(cluster="demo", app="shop", action="redeploy")
        if alert
        else await image_trigger(store, **{"image": None, **options})
    )
    body = raw(name) if change is None else mutated(name, *change)
    status, answer = await post(gateway, trigger, secret, body, headers)
    assert status == 200, answer
    assert answer["status"] == "ignored"
    assert reason in answer["detail"]
    assert await published(gateway) == []


async def test_push_to_a_scaling_trigger_is_ignored(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """An image push to a scale trigger is valid but not for it: 200 ignored."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    status, answer = await post(gateway, trigger, secret, raw("harbor_push_default.json"))
    assert (status, answer["status"], answer["reason"]) == (200, "ignored", "not_for_this_action")
    assert "--image-update" in answer["detail"]


# (body, query, error code, words of the detail)
REFUSED: list[tuple[bytes, str, str, str]] = [
    (b"this is not json", "", "unrecognised_body", "not JSON"),
    (b'{"build": 42}', "", "unrecognised_body", "source=plain"),
    (raw("dockerhub_push.json"), "&source=quay", "unrecognised_body", "does not look like a Quay"),
    (raw("dockerhub_push.json"), "&source=gitlab", "unrecognised_body", "source must be one of"),
    (b"", "&source=dockerhub", "unrecognised_body", "not JSON"),
    (mutated("dockerhub_push.json", ("push_data", "tag"), DELETE), "", "unusable_body", "tag"),
    (
        mutated("harbor_push_default.json", ("event_data", "resources"), []),
        "",
        "unusable_body",
        "no resources",
    ),
    (mutated("alibaba_push.json", ("push_data", "tag"), DELETE), "", "unusable_body", "tag"),
    (mutated("quay_push.json", ("updated_tags",), []), "", "unusable_body", "updated_tags"),
    (
        mutated("distribution_push.json", ("events", 0, "target", "repository"), DELETE),
        "",
        "unusable_body",
        "repository",
    ),
    (mutated("alertmanager_firing.json", ("version",), "3"), "", "unusable_body", "version 4"),
    (mutated("grafana_firing.json", ("status",), "pending"), "", "unusable_body", "status"),
    (
        mutated(
            "harbor_push_default.json",
            ("event_data", "resources", 0, "digest"),
            "sha256:not a digest",
        ),
        "",
        "unusable_body",
        "not an image digest",
    ),
]


@pytest.mark.parametrize(
    ("body", "query", "code", "detail"),
    REFUSED,
    ids=[f"{r[2]}:{r[3][:20]}" for r in REFUSED],
)
async def test_unrecognised_or_unusable_body_is_422(
    gateway: Gateway, store: SqliteTriggerStore, body: bytes, query: str, code: str, detail: str
) -> None:
    """A body in no known format, or missing what a command needs: 422 saying why."""
    trigger, secret = await image_trigger(store, None)
    status, answer = await post(gateway, trigger, secret, body, JSON, query)
    assert status == 422, answer
    assert answer["error"] == code
    assert detail in answer["detail"]
    assert await published(gateway) == []


async def test_github_package_body_without_its_header_needs_the_version(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A GitHub package event missing package_version is refused with 422."""
    trigger, secret = await image_trigger(store, None)
    body = mutated("github_package_published.json", ("package", "package_version"), DELETE)
    status, answer = await post(
        gateway, trigger, secret, body, {**JSON, "X-GitHub-Event": "package"}
    )
    assert (status, answer["error"]) == (422, "unusable_body")
    assert "package_version" in answer["detail"]


async def test_source_plain_ignores_the_body(gateway: Gateway, store: SqliteTriggerStore) -> None:
    """source=plain runs the trigger as a bodiless call whatever the body holds."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    status, answer = await post(gateway, trigger, secret, b"anything", JSON, "&source=plain")
    assert status == 202, answer
    (command,) = await published(gateway)
    assert command.command == Redeploy()
    assert command.source.origin is None


async def test_tags_of_one_digest_deploy_once_and_a_new_digest_rolls(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """Three tags of one digest publish one command; the same tag with a new digest publishes again."""
    trigger, secret = await image_trigger(store, "hub.harbor.com/test-webhook/debian")
    answers = []
    for tag in ("1.2.3", "1.2", "latest"):
        body = mutated("harbor_push_default.json", ("event_data", "resources", 0, "tag"), tag)
        answers.append(await post(gateway, trigger, secret, body))
    assert [s for s, _ in answers] == [202, 200, 200]
    first_job = answers[0][1]["job_id"]
    assert all(a["job_id"] == first_job for _, a in answers[1:])
    new_digest = "sha256:" + "b" * 64
    rolled = mutated(
        "harbor_push_default.json", ("event_data", "resources", 0, "digest"), new_digest
    )
    status, answer = await post(gateway, trigger, secret, rolled)
    assert status == 202, answer
    commands = await published(gateway)
    assert [c.command for c in commands] == [
        Redeploy(
            image=f"hub.harbor.com/test-webhook/debian:1.2.3@{HARBOR_DIGEST}", only_matching=True
        ),
        Redeploy(
            image=f"hub.harbor.com/test-webhook/debian:latest@{new_digest}", only_matching=True
        ),
    ]


async def test_one_notification_with_several_tags_deploys_the_most_specific(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A Harbor event listing three tags of one digest deploys once, with the highest version."""
    trigger, secret = await image_trigger(store, "hub.harbor.com/test-webhook/debian")
    body = fixture("harbor_push_default.json")
    resource = body["event_data"]["resources"][0]
    body["event_data"]["resources"] = [
        {**resource, "tag": tag, "resource_url": f"hub.harbor.com/test-webhook/debian:{tag}"}
        for tag in ("latest", "1.2.3", "1.2")
    ]
    status, answer = await post(gateway, trigger, secret, json.dumps(body).encode())
    assert status == 202, answer
    (command,) = await published(gateway)
    assert command.command == Redeploy(
        image=f"hub.harbor.com/test-webhook/debian:1.2.3@{HARBOR_DIGEST}", only_matching=True
    )


# --- authentication beyond the URL secret ---------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        lambda s: {"Authorization": f"Bearer {s}"},
        lambda s: {"X-Trigger-Secret": s},
        lambda s: {"Authorization": s},  # Harbor sends its "Auth Header" field verbatim
    ],
    ids=["bearer", "x-trigger-secret", "bare-authorization"],
)
async def test_secret_in_a_header_instead_of_the_url(
    gateway: Gateway, store: SqliteTriggerStore, header: Any
) -> None:
    """The secret may come in a header, so the URL carries none; a wrong one is 403."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    url = gateway.call_url(trigger, secret).split("&secret=")[0]
    async with gateway.http.post(url, headers=header(secret)) as response:
        assert response.status == 202, await response.text()
    async with gateway.http.post(url, headers=header("0" * 64)) as response:
        assert response.status == 403


async def test_trigger_can_refuse_query_string_secrets(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """--header-secret-only: the secret in the URL is refused (400), in a header accepted."""
    trigger, secret = await store.create(
        cluster="demo",
        app="shop",
        action="redeploy",
        options=TriggerOptions(header_secret_only=True),
    )
    url = gateway.call_url(trigger, secret)
    async with gateway.http.post(url) as response:
        answer = await response.json()
        assert (response.status, answer["error"]) == (400, "query_secret_refused")
        assert secret not in json.dumps(answer)
    async with gateway.http.post(
        url.split("&secret=")[0], headers={"X-Trigger-Secret": secret}
    ) as response:
        assert response.status == 202
    assert len(await published(gateway)) == 1


GITHUB_KEY = "It's a Secret to Everybody"


async def test_github_signature_known_vector_wrong_and_missing(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """GitHub's documented vector passes the signature check; a wrong or absent one is 401."""
    trigger, secret = await image_trigger(
        store, "ghcr.io/codertocat/hello-world", signature="github", signing_secret=GITHUB_KEY
    )
    vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    # The signature is right, so the body itself is judged next: not JSON, 422.
    status, answer = await post(
        gateway, trigger, secret, b"Hello, World!", {"X-Hub-Signature-256": vector}
    )
    assert (status, answer["error"]) == (422, "unrecognised_body")
    status, answer = await post(
        gateway, trigger, secret, b"Hello, World!", {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    )
    assert (status, answer["error"]) == (401, "bad_signature")
    status, answer = await post(gateway, trigger, secret, b"Hello, World!")
    assert (status, answer["error"]) == (401, "missing_signature")

    body = mutated(
        "github_registry_package_published.json",
        ("registry_package", "package_version", "container_metadata", "tag", "name"),
        "v1.2.0",
    )
    signature = "sha256=" + hmac.new(GITHUB_KEY.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        **JSON,
        "X-GitHub-Event": "registry_package",
        "X-GitHub-Delivery": "d7a0a1f0-0001",
        "X-Hub-Signature-256": signature,
    }
    status, answer = await post(gateway, trigger, secret, body, headers)
    assert status == 202, answer
    # GitHub's "Redeliver" sends the same delivery id: acted on once.
    status, again = await post(gateway, trigger, secret, body, headers)
    assert (status, again["status"]) == (200, "ignored")
    assert "delivery d7a0a1f0-0001 was already received" in again["detail"]
    assert again["job_id"] == answer["job_id"]
    assert len(await published(gateway)) == 1


async def test_generic_hmac_signature(gateway: Gateway, store: SqliteTriggerStore) -> None:
    """--signature hmac: X-Signature: sha256=<hex> of the body; a wrong one is 401."""
    trigger, secret = await image_trigger(
        store, "svendowideit/testhook", signature="hmac", signing_secret="k3y-signing-0123456"
    )
    body = raw("dockerhub_push.json")
    good = "sha256=" + hmac.new(b"k3y-signing-0123456", body, hashlib.sha256).hexdigest()
    status, answer = await post(gateway, trigger, secret, body, {**JSON, "X-Signature": good})
    assert status == 202, answer
    status, answer = await post(
        gateway, trigger, secret, body + b" ", {**JSON, "X-Signature": good}
    )
    assert (status, answer["error"]) == (401, "bad_signature")


def _timestamped(key: str, body: bytes, stamp: int) -> str:
    digest = hmac.new(key.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


async def test_timestamped_signature_rejects_stale_and_replayed_requests(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """t=<unix>,v1=<hex>: fresh passes, ten minutes old is 401 stale, the same request again 409."""
    trigger, secret = await image_trigger(
        store,
        "svendowideit/testhook",
        signature="timestamped",
        signing_secret="k3y-signing-0123456",
    )
    body = raw("dockerhub_push.json")
    now = int(time.time())
    fresh = {**JSON, "X-Signature": _timestamped("k3y-signing-0123456", body, now)}
    status, answer = await post(gateway, trigger, secret, body, fresh)
    assert status == 202, answer
    status, answer = await post(gateway, trigger, secret, body, fresh)
    assert (status, answer["error"]) == (409, "replayed_request")
    stale = {**JSON, "X-Signature": _timestamped("k3y-signing-0123456", body, now - 600)}
    status, answer = await post(gateway, trigger, secret, body, stale)
    assert (status, answer["error"]) == (401, "stale_signature")
    forged = {**JSON, "X-Signature": _timestamped("wrong", body, now)}
    status, answer = await post(gateway, trigger, secret, body, forged)
    assert (status, answer["error"]) == (401, "bad_signature")
    assert len(await published(gateway)) == 1


async def test_signature_is_checked_only_after_the_secret(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """A wrong secret is 403 whatever the signature: nothing is revealed before the secret matches."""
    trigger, _ = await image_trigger(store, None, signature="github", signing_secret=GITHUB_KEY)
    status, answer = await post(gateway, trigger, "0" * 64, b"Hello, World!")
    assert (status, answer["error"]) == (403, "forbidden")


async def test_senders_own_authorization_header_does_not_hide_the_url_secret(
    gateway: Gateway, store: SqliteTriggerStore
) -> None:
    """An Authorization header that cannot be a trigger secret leaves the URL secret in charge."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="redeploy")
    url = gateway.call_url(trigger, secret)
    async with gateway.http.post(
        url, headers={"Authorization": "Bearer registry-token"}
    ) as response:
        assert response.status == 202, await response.text()
    async with gateway.http.post(
        url.split("&secret=")[0], headers={"Authorization": "Bearer registry-token"}
    ) as response:
        assert response.status == 403
