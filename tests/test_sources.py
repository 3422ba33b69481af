"""Recognising registry pushes and alerts: pure parsing, on the vendors' own sample payloads."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.recent import MemoryRecentEvents
from gateway.sources import (
    SOURCES,
    Alert,
    ImagePush,
    UnrecognisedBody,
    UnusableBody,
    github_signature,
    parse_event,
)
from gateway.sources.plan import is_artifact_tag, tag_allowed
from shared.images import familiar_repository, image_reference, normalize_repository
from shared.triggers import TriggerOptions

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
JSON = "application/json"


def fixture(name: str) -> dict[str, Any]:
    """A sample payload, decoded (a fresh copy each time, safe to change)."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def raw(name: str) -> bytes:
    """A sample payload's bytes, exactly as stored."""
    return (FIXTURES / name).read_bytes()


# (fixture, headers, content type, source, first push or alert expected)
RECOGNISED: list[tuple[str, dict[str, str], str, str, ImagePush | Alert]] = [
    (
        "dockerhub_push.json",
        {},
        JSON,
        "dockerhub",
        ImagePush(
            action="push",
            repository="docker.io/svendowideit/testhook",
            tag="latest",
            pushed_at="1417566161",
        ),
    ),
    (
        "harbor_push_default.json",
        {},
        JSON,
        "harbor",
        ImagePush(
            action="push",
            repository="hub.harbor.com/test-webhook/debian",
            tag="latest",
            digest="sha256:8a9e9863dbb6e10edb5adfe917c00da84e1700fa76e7ed02476aa6e6fb8ee0d8",
            pushed_at="1586922308",
            kind="PUSH_ARTIFACT",
        ),
    ),
    (
        "harbor_push_cloudevents.json",
        {},
        "application/cloudevents+json",
        "harbor",
        ImagePush(
            action="push",
            repository="localhost/harbor/alpine",
            digest="sha256:954b378c375d852eb3c63ab88978f640b4348b01c1b3456a024a81536dafbbf4",
            kind="harbor.artifact.pushed",
        ),
    ),
    (
        "github_registry_package_published.json",
        {"X-GitHub-Event": "registry_package", "X-GitHub-Delivery": "d-1"},
        JSON,
        "github",
        ImagePush(
            action="push",
            repository="ghcr.io/codertocat/hello-world",
            digest="sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",
            kind="registry_package.published",
        ),
    ),
    (
        "github_package_published.json",
        {"X-GitHub-Event": "package"},
        JSON,
        "github",
        ImagePush(
            action="push",
            repository="ghcr.io/codertocat/hello-world",
            digest="sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",
            kind="package.published",
        ),
    ),
    (
        "distribution_push.json",
        {},
        "application/vnd.docker.distribution.events.v2+json",
        "distribution",
        ImagePush(
            action="push",
            repository="registrycluster.local/library/test",
            digest="sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf",
            pushed_at="2006-01-02T15:04:05Z",
            kind="push",
        ),
    ),
    (
        "alibaba_push.json",
        {},
        JSON,
        "alibaba",
        ImagePush(
            action="push",
            repository="registry.cn-hangzhou.aliyuncs.com/namespace/repotest",
            tag="latest",
            digest="sha256:457f4aa83fc9a6663ab9d1b0a6e2dce25a12a943ed5bf2c1747c58d48bbb4917",
            pushed_at="2016-11-29 12:25:46",
        ),
    ),
    (
        "quay_push.json",
        {},
        JSON,
        "quay",
        ImagePush(action="push", repository="quay.io/dgangaia/test", tag="latest"),
    ),
    (
        "quay_push_legacy.json",
        {},
        JSON,
        "quay",
        ImagePush(action="push", repository="quay.io/devtable/ubuntu", tag="latest"),
    ),
    (
        "acr_push.json",
        {},
        JSON,
        "acr",
        ImagePush(
            action="push",
            repository="myregistry.azurecr.io/hello-world",
            tag="v1",
            digest="sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d",
            pushed_at="2017-11-17T16:52:01.343145347Z",
            kind="push",
        ),
    ),
    (
        "acr_delete.json",
        {},
        JSON,
        "acr",
        ImagePush(
            action="delete",
            repository="myregistry.azurecr.io/hello-world",
            digest="sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d",
            pushed_at="2017-11-17T16:54:53.657764628Z",
            kind="delete",
        ),
    ),
    (
        "jfrog_docker_pushed.json",
        {},
        JSON,
        "jfrog",
        ImagePush(
            action="push",
            repository="example.jfrog.io/docker-remote-cache/library/ubuntu",
            aliases=("docker-remote-cache.example.jfrog.io/library/ubuntu",),
            tag="latest",
            digest="sha256:35c4a2c15539c6c1e4e5fa4e554dac323ad0107d8eb5c582d6ff386b383b7dce",
            kind="docker pushed",
        ),
    ),
    (
        "harbor1_push.json",
        {},
        JSON,
        "harbor",
        ImagePush(
            action="push",
            repository="demo.goharbor.io/test123/alpine",
            tag="3.10",
            digest="sha256:e4355b66995c96b4b468159fc5c7e3540fcef961189ca13fee877798649f531a",
            pushed_at="1585846234",
            kind="pushImage",
        ),
    ),
    (
        "gar_pubsub_push.json",
        {},
        JSON,
        "gar",
        ImagePush(
            action="push",
            repository="us.gcr.io/am/am.kebab.api",
            tag="test",
            pushed_at="2020-01-30T04:18:04.805Z",
            kind="INSERT",
        ),
    ),
    (
        "nexus_component_created.json",
        {"X-Nexus-Webhook-Id": "rm:repository:component"},
        JSON,
        "nexus",
        ImagePush(
            action="push",
            repository="app1/alpine",
            tag="3.4",
            pushed_at="2020-04-05T21:49:44.219+0000",
            kind="component created",
            host_known=False,
        ),
    ),
    (
        "cdevents_harbor_structured.json",
        {},
        "application/cloudevents+json",
        "cdevents",
        ImagePush(
            action="push",
            repository="harbor.dev/library/busybox",
            tag="v1.0",
            digest="sha256:dde8e930c7b6a490f728e66292bc9bce42efc9bbb5278bae40e4f30f6e00fe8c",
            kind="artifact published",
        ),
    ),
    (
        "alertmanager_firing.json",
        {},
        JSON,
        "alertmanager",
        Alert(
            status="firing",
            key='{}/{severity="critical"}:{alertname="ProbeFailure"}',
            name="ProbeFailure",
            fingerprints=("1a30ba71cca2921f",),
            count=1,
        ),
    ),
    (
        "grafana_firing.json",
        {},
        JSON,
        "grafana",
        Alert(
            status="firing",
            key="{}:{}",
            name="High memory usage",
            fingerprints=("bc97ff14869b13e3", "c6eadffa33fcdf37"),
            count=2,
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "headers", "content_type", "source", "expected"),
    RECOGNISED,
    ids=[r[0] for r in RECOGNISED],
)
def test_sample_payload_is_recognised_by_shape_and_headers(
    name: str,
    headers: dict[str, str],
    content_type: str,
    source: str,
    expected: ImagePush | Alert,
) -> None:
    """Each vendor's documented sample is recognised without source= and parsed exactly."""
    parsed = parse_event(headers, content_type, raw(name))
    assert parsed.source == source
    if isinstance(expected, Alert):
        assert parsed.alert == expected
        assert parsed.pushes == ()
    else:
        assert parsed.pushes[0] == expected
        assert parsed.alert is None


@pytest.mark.parametrize(("name", "source"), [(r[0], r[3]) for r in RECOGNISED])
def test_explicit_source_parameter_parses_its_own_sample(name: str, source: str) -> None:
    """source=<name> accepts the vendor's own sample even without the vendor's headers."""
    assert parse_event({}, JSON, raw(name), source).source == source


def test_explicit_source_rejects_another_vendors_body() -> None:
    """source= overrides detection: a Docker Hub body sent as source=alertmanager is refused."""
    with pytest.raises(UnrecognisedBody, match="does not look like a Prometheus Alertmanager"):
        parse_event({}, JSON, raw("dockerhub_push.json"), "alertmanager")


def test_unknown_source_name_lists_the_known_ones() -> None:
    """An unknown source= value is refused with the list of names that work."""
    with pytest.raises(UnrecognisedBody, match="dockerhub") as caught:
        parse_event({}, JSON, b"{}", "gitlab")
    assert "plain" in str(caught.value)
    assert set(SOURCES) == {
        "github",
        "distribution",
        "cdevents",
        "nexus",
        "harbor",
        "acr",
        "jfrog",
        "gar",
        "alibaba",
        "dockerhub",
        "quay",
        "alertmanager",
        "grafana",
        "generic",
    }


def test_distribution_v1_media_type_and_layer_events() -> None:
    """The v1 media type is recognised; layer pushes are skipped, only the manifest deploys."""
    parsed = parse_event(
        {}, "application/vnd.docker.distribution.events.v1+json", raw("distribution_push.json")
    )
    assert len(parsed.pushes) == 1
    assert parsed.event_id == "asdf-asdf-asdf-asdf-0"
    layers_only = fixture("distribution_push.json")
    layers_only["events"] = layers_only["events"][1:]
    parsed = parse_event({}, JSON, json.dumps(layers_only).encode())
    assert parsed.pushes == ()
    assert parsed.note is not None
    assert "manifest" in parsed.note


def test_distribution_pull_is_parsed_as_a_pull() -> None:
    """A manifest pull is recognised, as a pull (which never deploys)."""
    parsed = parse_event({}, JSON, raw("distribution_pull.json"))
    assert [p.action for p in parsed.pushes] == ["pull"]
    assert parsed.pushes[0].repository == "192.168.100.227:5000/hello-world"


def test_github_ping_and_other_events_are_notes() -> None:
    """GitHub's ping and non-package events parse to a note, not a push."""
    ping = parse_event({"X-GitHub-Event": "ping"}, JSON, b'{"zen": "Keep it logically awesome."}')
    assert ping.pushes == ()
    assert ping.note is not None
    assert "ping" in ping.note
    push = parse_event({"X-GitHub-Event": "push"}, JSON, b'{"ref": "refs/heads/main"}')
    assert push.note is not None
    assert "packages" in push.note


def test_github_npm_package_is_not_an_image() -> None:
    """A GitHub package event for a non-container package is a note, not a push."""
    body = fixture("github_package_published.json")
    body["package"]["ecosystem"] = "npm"
    body["package"]["registry"]["type"] = "npm"
    parsed = parse_event({"X-GitHub-Event": "package"}, JSON, json.dumps(body).encode())
    assert parsed.pushes == ()
    assert parsed.note == "not a container image package"


DELETE = object()
GITHUB_PACKAGE = {"X-GitHub-Event": "package"}


@pytest.mark.parametrize(
    ("path", "value", "repository", "tag", "digest"),
    [
        # ghcr.io: the tag in container_metadata.tag.name, the digest beside it.
        (
            ("package", "package_version", "container_metadata", "tag", "name"),
            "v1.2.0",
            "ghcr.io/codertocat/hello-world",
            "v1.2.0",
            "sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",
        ),
        # No owner object: the owner comes from the namespace.
        (
            ("package", "owner"),
            DELETE,
            "ghcr.io/codertocat/hello-world",
            None,
            "sha256:6c62fb45fe66bfb1ea9a66abc38f6a0cc974292b",
        ),
        # No container_metadata (the Docker registry of GitHub Packages): the version is the tag.
        (
            ("package", "package_version", "container_metadata"),
            DELETE,
            "ghcr.io/codertocat/hello-world",
            None,
            "sha256:3da1996a8115d7616457760d9920b815241d0a03b34cf5f04e9a0e9d8de37498",
        ),
    ],
    ids=["tag-name", "no-owner", "no-container-metadata"],
)
def test_github_package_shapes(
    path: tuple[str | int, ...], value: Any, repository: str, tag: str | None, digest: str
) -> None:
    """Every shape GitHub has sent gives the repository, the tag and the digest it can."""
    (push,) = parse_event(
        GITHUB_PACKAGE, JSON, mutated("github_package_published.json", path, value)
    ).pushes
    assert (push.repository, push.tag, push.digest) == (repository, tag, digest)


def test_github_version_as_tag_without_owner_or_namespace() -> None:
    """An old package event: no owner, no namespace, no metadata; tag from version, owner from
    the organization."""
    body = fixture("github_package_published.json")
    package = body["package"]
    del package["owner"], package["namespace"], package["package_version"]["container_metadata"]
    package["package_version"]["version"] = "1.4.0"
    package["package_version"]["name"] = "1.4.0"
    package["package_version"].pop("package_url", None)
    body["organization"] = {"login": "Acme"}
    (push,) = parse_event(GITHUB_PACKAGE, JSON, json.dumps(body).encode()).pushes
    assert (push.repository, push.tag, push.digest) == (
        "ghcr.io/acme/hello-world-npm",
        "1.4.0",
        None,
    )
    del body["organization"], body["repository"]
    with pytest.raises(UnusableBody, match="no owner"):
        parse_event(GITHUB_PACKAGE, JSON, json.dumps(body).encode())


def test_cdevents_binary_mode_and_non_image_artifacts() -> None:
    """Binary mode: the CDEvent is the body and ce-* headers name it; a non-OCI artifact
    (the spec's own pkg:golang example) is a note."""
    body = json.dumps(fixture("cdevents_harbor_structured.json")["data"]).encode()
    headers = {
        "ce-specversion": "1.0",
        "ce-type": "dev.cdevents.artifact.packaged.0.2.0",
        "ce-id": "binary-1",
    }
    parsed = parse_event(headers, JSON, body)
    assert parsed.source == "cdevents"
    assert parsed.event_id == "binary-1"
    assert parsed.pushes[0].repository == "harbor.dev/library/busybox"
    golang = parse_event({}, JSON, raw("cdevents_artifact_published.json"))
    assert golang.pushes == ()
    assert golang.note is not None
    assert "not an OCI image" in golang.note


def test_nexus_asset_manifest_and_other_formats() -> None:
    """A Docker manifest asset names the image; blobs and Maven components are notes."""
    headers = {"X-Nexus-Webhook-Id": "rm:repository:asset", "X-Nexus-Webhook-Delivery": "d-9"}
    asset: dict[str, Any] = {
        "timestamp": "2020-04-05T21:49:44.219+0000",
        "nodeId": "n",
        "initiator": "admin",
        "repositoryName": "docker-hosted",
        "action": "CREATED",
        "asset": {
            "id": "a",
            "assetId": "b",
            "format": "docker",
            "name": "v2/app1/alpine/manifests/3.5",
        },
    }
    parsed = parse_event(headers, JSON, json.dumps(asset).encode())
    assert (parsed.pushes[0].repository, parsed.pushes[0].tag, parsed.event_id) == (
        "app1/alpine",
        "3.5",
        "d-9",
    )
    asset["asset"]["name"] = "v2/app1/alpine/blobs/sha256:" + "a" * 64
    assert parse_event(headers, JSON, json.dumps(asset).encode()).pushes == ()
    maven = mutated("nexus_component_created.json", ("component", "format"), "maven2")
    assert parse_event({}, JSON, maven).pushes == ()


def test_generic_body_and_what_it_refuses() -> None:
    """The documented generic body parses (also a full reference); extra fields are not it."""
    parsed = parse_event(
        {}, JSON, b'{"image": "registry.example.com/team/api:1.4.2", "id": "ci-77"}'
    )
    assert parsed.source == "generic"
    assert (parsed.pushes[0].tag, parsed.event_id) == ("1.4.2", "ci-77")
    with pytest.raises(UnrecognisedBody):
        parse_event({}, JSON, b'{"image": "x", "tag": "1", "pipeline": "p"}')


@pytest.mark.parametrize(
    ("tag", "artifact"),
    [
        ("sha256-" + "ab" * 32 + ".sig", True),
        ("sha256-" + "ab" * 32 + ".att", True),
        ("sha256-" + "ab" * 32, True),
        ("v1.2.0", False),
        ("sha256-short.sig", False),
        (None, False),
    ],
)
def test_artifact_tags(tag: str | None, artifact: bool) -> None:
    """Cosign signature/attestation tags and referrer tags are artifacts, not releases."""
    assert is_artifact_tag(tag) is artifact


def mutated(name: str, path: tuple[str | int, ...], value: Any) -> bytes:
    body = fixture(name)
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(body).encode()


# Recognised formats whose body lacks what a command needs: (fixture, change, headers, message).
UNUSABLE: list[tuple[str, tuple[str | int, ...], Any, dict[str, str], str]] = [
    ("dockerhub_push.json", ("push_data", "tag"), DELETE, {}, "tag"),
    ("harbor_push_default.json", ("event_data", "resources"), [], {}, "no resources"),
    (
        "harbor_push_default.json",
        ("event_data", "resources", 0, "resource_url"),
        DELETE,
        {},
        "resource_url",
    ),
    (
        "github_package_published.json",
        ("package", "package_version"),
        DELETE,
        {"X-GitHub-Event": "package"},
        "package_version",
    ),
    ("distribution_push.json", ("events", 0, "target", "repository"), DELETE, {}, "repository"),
    ("alibaba_push.json", ("push_data", "tag"), DELETE, {}, "tag"),
    ("quay_push.json", ("updated_tags",), [], {}, "no updated_tags"),
    ("alertmanager_firing.json", ("version",), "3", {}, "version '3'"),
    ("grafana_firing.json", ("status",), "pending", {}, "status"),
]


@pytest.mark.parametrize(
    ("name", "path", "value", "headers", "message"),
    UNUSABLE,
    ids=[f"{u[0]}:{'.'.join(map(str, u[1]))}" for u in UNUSABLE],
)
def test_recognised_but_unusable_body_says_what_is_missing(
    name: str, path: tuple[str | int, ...], value: Any, headers: dict[str, str], message: str
) -> None:
    """A known format missing a needed field raises UnusableBody naming the field."""
    with pytest.raises(UnusableBody, match=message):
        parse_event(headers, JSON, mutated(name, path, value))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json at all", "not JSON"),
        (b'{"hello": "world"}', "not a registry push or alert"),
        (b"[1, 2, 3]", "not a registry push or alert"),
    ],
)
def test_unknown_body_is_unrecognised(body: bytes, message: str) -> None:
    """A body in no known format raises UnrecognisedBody with how to fix it."""
    with pytest.raises(UnrecognisedBody, match=message):
        parse_event({}, JSON, body)


def test_github_documented_signature_vector() -> None:
    """GitHub's documented example: the secret and body give the published signature."""
    assert (
        github_signature("It's a Secret to Everybody", b"Hello, World!")
        == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


@pytest.mark.parametrize(
    ("reference", "canonical", "familiar"),
    [
        ("nginx", "docker.io/library/nginx", "nginx"),
        ("nginx:1.27", "docker.io/library/nginx", "nginx"),
        ("library/nginx", "docker.io/library/nginx", "nginx"),
        ("index.docker.io/library/nginx@sha256:abc", "docker.io/library/nginx", "nginx"),
        ("svendowideit/testhook", "docker.io/svendowideit/testhook", "svendowideit/testhook"),
        ("ghcr.io/Acme/API:1.0", "ghcr.io/acme/api", "ghcr.io/acme/api"),
        ("localhost:5000/app:dev", "localhost:5000/app", "localhost:5000/app"),
        ("localhost/harbor/alpine", "localhost/harbor/alpine", "localhost/harbor/alpine"),
    ],
)
def test_repository_spellings_normalise(reference: str, canonical: str, familiar: str) -> None:
    """Every spelling of one repository compares equal; the familiar form is Docker's."""
    assert normalize_repository(reference) == canonical
    assert familiar_repository(reference) == familiar


def test_image_reference_pins_the_digest_and_refuses_junk() -> None:
    """The deployed reference carries tag and digest; a malformed digest is refused."""
    digest = "sha256:" + "a" * 64
    assert image_reference("nginx", "1.28", digest) == f"nginx:1.28@{digest}"
    assert image_reference("nginx", None, digest) == f"nginx@{digest}"
    assert image_reference("nginx", "1.28", None) == "nginx:1.28"
    with pytest.raises(ValueError, match="not an image digest"):
        image_reference("nginx", "1.28", "sha256:bad digest")


@pytest.mark.parametrize(
    ("options", "tag", "allowed"),
    [
        (TriggerOptions(), "anything", True),
        (TriggerOptions(), None, True),
        (TriggerOptions(tags="v1.*"), "v1.4.0", True),
        (TriggerOptions(tags="v1.*"), "v2.0.0", False),
        (TriggerOptions(tags="v1.*, stable"), "stable", True),
        (TriggerOptions(tags="v1.*"), None, False),
        (TriggerOptions(semver=">=1.2,<2"), "1.4.0", True),
        (TriggerOptions(semver=">=1.2,<2"), "v1.2.0", True),
        (TriggerOptions(semver=">=1.2,<2"), "2.0.0", False),
        (TriggerOptions(semver=">=1.2,<2"), "1.1.9", False),
        (TriggerOptions(semver=">=1.2,<2"), "1.5.0-rc1", False),
        (TriggerOptions(semver=">=1.2,<2"), "latest", False),
    ],
)
def test_tag_filters(options: TriggerOptions, tag: str | None, allowed: bool) -> None:
    """Globs match tag names; ranges match version tags, never pre-releases or 'latest'."""
    assert tag_allowed(tag, options) is allowed


def test_trigger_options_are_checked_against_the_action() -> None:
    """Options that do not fit the trigger are refused with the flag to fix."""
    with pytest.raises(ValueError, match="--image-update"):
        TriggerOptions(image="nginx").check("redeploy", image_update=False)
    with pytest.raises(ValueError, match="scale triggers only"):
        TriggerOptions(step=2).check("redeploy", image_update=False)
    with pytest.raises(ValueError, match="not a version range"):
        TriggerOptions(image="nginx", semver="one point two").check("redeploy", image_update=True)
    with pytest.raises(ValueError, match="not both"):
        TriggerOptions(tags="v*", semver=">1").check("redeploy", image_update=True)
    TriggerOptions(image="nginx", semver=">=1.2,<2").check("redeploy", image_update=True)


async def test_recent_events_remember_for_their_ttl_only() -> None:
    """A claimed key answers its job id until its time to live passes, then is free again."""
    now = [1000.0]
    recent = MemoryRecentEvents(clock=lambda: now[0])
    assert await recent.claim("k", 60) is None
    assert await recent.claim("k", 60) == "pending"
    await recent.confirm("k", "job-1", 60)
    assert await recent.claim("k", 60) == "job-1"
    now[0] += 61
    assert await recent.claim("k", 60) is None
    await recent.release("k")
    assert await recent.seen("k") is None


def test_fixtures_are_unchanged_copies() -> None:
    """The sample files stay valid JSON, and every one of them is exercised above."""
    names = {p.name for p in FIXTURES.glob("*.json")}
    used = {r[0] for r in RECOGNISED} | {
        "distribution_pull.json",
        "cdevents_artifact_published.json",
    }
    assert names == used
    for name in names:
        assert isinstance(copy.deepcopy(fixture(name)), dict)
