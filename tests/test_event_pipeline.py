"""Registry pushes and alerts end to end: HTTP -> RabbitMQ -> worker -> local cluster -> result."""

from __future__ import annotations

import asyncio
import json

from shared.store import SqliteTriggerStore
from shared.triggers import TriggerOptions
from tests.support.broker import published, queue_depth
from tests.support.gateways import Gateway
from tests.support.workers import Results
from tests.test_event_calls import JSON, image_trigger
from tests.test_sources import raw
from triggers.render import event_line
from workers.orchestrators.local import LocalOrchestrator
from workers.worker import Worker


async def _running_and_bound(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    service: str,
    running: str,
    repository: str,
) -> str:
    """Add a service of demo/shop running `running`; the URL of a trigger bound to `repository`."""
    cluster.cluster.set_service("demo", "shop", service, replicas=1, image=running)
    trigger, secret = await image_trigger(store, repository)
    return gateway.call_url(trigger, secret)


async def test_docker_hub_push_rolls_the_bound_service_image_and_revision(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """Docker Hub's sample push changes the image and revision of the service running it, only."""
    url = await _running_and_bound(
        gateway,
        store,
        cluster,
        "hook",
        "docker.io/svendowideit/testhook:1.0",
        "svendowideit/testhook",
    )
    async with gateway.http.post(url, data=raw("dockerhub_push.json"), headers=JSON) as response:
        body = await response.json()
        assert response.status == 202, body

    (event,) = await results.wait_for(body["job_id"])
    assert event.status == "succeeded", event.error
    assert set(event.after) == {"hook"}
    assert event.before["hook"].revision == 1
    assert event.after["hook"].image == "svendowideit/testhook:latest"
    assert event.after["hook"].revision == 2
    assert event.image == "svendowideit/testhook:latest"
    origin = event.source.origin
    assert origin is not None
    assert (origin.source, origin.repository, origin.tag) == (
        "dockerhub",
        "svendowideit/testhook",
        "latest",
    )
    assert "via dockerhub svendowideit/testhook:latest" in event_line(event, colour=False)
    services = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]
    assert services["hook"] == {
        "replicas": 1,
        "image": "svendowideit/testhook:latest",
        "revision": 2,
    }
    assert services["web"] == {"replicas": 2, "image": "nginx:1.27", "revision": 1}
    assert services["api"]["revision"] == 1


async def test_unbound_image_update_trigger_skips_an_image_the_app_does_not_run(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """--image-update without --image: a push of a repository no service runs changes nothing."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="redeploy", image_update=True
    )
    url = gateway.call_url(trigger, secret)
    async with gateway.http.post(url, data=raw("quay_push.json"), headers=JSON) as response:
        body = await response.json()
        assert response.status == 202, body
    (event,) = await results.wait_for(body["job_id"])
    assert event.status == "skipped"
    assert event.detail is not None
    assert "quay.io/dgangaia/test" in event.detail
    services = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]
    assert {s["revision"] for s in services.values()} == {1}


async def test_alertmanager_storm_of_twenty_identical_alerts_scales_once(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """20 identical firing notifications at once: one 202, nineteen ignored, web scaled once."""
    trigger, secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web", options=TriggerOptions(step=2)
    )
    url = gateway.call_url(trigger, secret)
    body = raw("alertmanager_firing.json")

    async def send() -> tuple[int, dict[str, object]]:
        async with gateway.http.post(url, data=body, headers=JSON) as response:
            return response.status, await response.json()

    answers = await asyncio.gather(*(send() for _ in range(20)))
    accepted = [a for s, a in answers if s == 202]
    ignored = [a for s, a in answers if s == 200]
    assert len(accepted) == 1, answers
    assert len(ignored) == 19
    job_id = accepted[0]["job_id"]
    assert all(a["status"] == "ignored" and a.get("job_id", job_id) == job_id for a in ignored)

    (event,) = await results.wait_for(str(job_id))
    assert event.status == "succeeded"
    assert (event.before["web"].replicas, event.after["web"].replicas) == (2, 4)
    assert event.source.origin is not None
    assert event.source.origin.alert == "ProbeFailure"
    # Only one command was ever published: the queues are empty and the cluster moved once.
    assert await published(gateway) == []
    assert await queue_depth(gateway.settings.amqp_url, "triggers.dead") == 0
    services = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]
    assert services["web"]["replicas"] == 4
    assert [e.job_id for e in results.events if e.trigger_id == trigger.id] == [job_id]


async def test_same_tag_pushed_again_with_a_new_digest_rolls_again(
    gateway: Gateway,
    store: SqliteTriggerStore,
    cluster: LocalOrchestrator,
    worker: Worker,
    results: Results,
) -> None:
    """Pushing 'latest' twice (two digests) rolls twice: the image is pinned by digest."""
    url = await _running_and_bound(
        gateway,
        store,
        cluster,
        "deb",
        "hub.harbor.com/test-webhook/debian:latest",
        "hub.harbor.com/test-webhook/debian",
    )
    images = []
    for digest in ("sha256:" + "1" * 64, "sha256:" + "2" * 64):
        payload = json.loads(raw("harbor_push_default.json"))
        payload["event_data"]["resources"][0]["digest"] = digest
        async with gateway.http.post(url, json=payload) as response:
            body = await response.json()
            assert response.status == 202, body
        (event,) = await results.wait_for(body["job_id"])
        assert event.status == "succeeded"
        images.append((event.after["deb"].image, event.after["deb"].revision))
    assert images == [
        (f"hub.harbor.com/test-webhook/debian:latest@sha256:{'1' * 64}", 2),
        (f"hub.harbor.com/test-webhook/debian:latest@sha256:{'2' * 64}", 3),
    ]
