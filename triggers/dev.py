"""`triggers dev`: gateway, worker and a seeded local cluster in one process."""

from __future__ import annotations

import asyncio
import secrets
import sys

import click
from aiohttp import web

from gateway.app import create_app
from shared.amqp_transport import redact
from shared.broker import AmqpBus, Bus, MemoryBus
from shared.errors import BrokerUnavailable
from shared.jobs import open_job_store
from shared.messages import ResultEvent
from shared.settings import Settings
from shared.signals import on_stop_signal
from shared.store import open_store
from shared.triggers import trigger_call_url
from triggers.render import event_line
from workers.orchestrators.local import LocalOrchestrator
from workers.recorder import Recorder
from workers.worker import Worker

__all__ = ["DEMO_CLUSTER", "run_dev"]

DEMO_CLUSTER = "demo"
DEMO_APP = "shop"
DEMO_SERVICES = {"web": ("nginx:1.27", 2), "api": ("ghcr.io/acme/shop-api:1.4.2", 1)}


async def _open_bus(settings: Settings) -> Bus:
    bus = AmqpBus.from_settings(settings, "dev", connect_timeout=2.0)
    try:
        await bus.start()
    except BrokerUnavailable:
        return MemoryBus()
    return bus


def _dev_settings(settings: Settings, host: str, port: int) -> tuple[Settings, str]:
    """The settings of this run, and how to sign in to the console (/ui).

    Printed URLs point at where it listens; without an admin token (the console and the
    admin API need one) it makes one for this run and prints it; a token from the
    environment is not echoed.
    """
    if host not in ("127.0.0.1", "localhost") and settings.public_url == Settings().public_url:
        settings = settings.with_(public_url=f"http://{host}:{port}")
    elif port != 8080 and settings.public_url == Settings().public_url:
        settings = settings.with_(public_url=f"http://127.0.0.1:{port}")
    if settings.admin_token:
        return settings, "sign in with TRIGGERS_ADMIN_TOKEN"
    settings = settings.with_(admin_token=secrets.token_urlsafe(18))
    return settings, f"admin token for this run: {settings.admin_token}"


def _broker_line(settings: Settings, bus: Bus) -> str:
    """Which bus dev uses, calmly: falling back is expected on a machine without RabbitMQ."""
    if not bus.durable:
        return (
            f"an in-process bus: RabbitMQ is not reachable at {redact(settings.amqp_url)}, "
            "so commands live only in this process\n(`triggers tail --since 1h` "
            "replays the history; live `tail` needs RabbitMQ)"
        )
    return f"RabbitMQ ({getattr(bus, 'node', None) or redact(settings.amqp_url)})"


async def run_dev(settings: Settings, host: str, port: int, *, log_file: str | None) -> None:
    """Seed, create two triggers, serve, and print every result until Ctrl-C.

    The terminal gets the curl lines and one line per result; the services' log lines go
    to `log_file` (None: to stderr, as `--verbose` asks).
    """
    settings, sign_in = _dev_settings(settings, host, port)
    orchestrator = LocalOrchestrator(settings.local_state)
    snapshot = orchestrator.cluster.snapshot()
    if DEMO_APP not in snapshot["clusters"].get(DEMO_CLUSTER, {}).get("apps", {}):
        for service, (image, replicas) in DEMO_SERVICES.items():
            orchestrator.cluster.set_service(
                DEMO_CLUSTER, DEMO_APP, service, replicas=replicas, image=image
            )

    store = open_store(settings.database)
    redeploy, redeploy_secret = await store.create(
        cluster=DEMO_CLUSTER, app=DEMO_APP, action="redeploy"
    )
    scale, scale_secret = await store.create(
        cluster=DEMO_CLUSTER, app=DEMO_APP, action="scale", service="web"
    )

    bus = await _open_bus(settings)
    worker = Worker(settings, bus, orchestrator)
    jobs = open_job_store(settings.database)
    recorder = Recorder(settings, bus, jobs)
    colour = sys.stdout.isatty()

    async def show(event: ResultEvent) -> None:
        click.echo(event_line(event, colour=colour))

    await bus.subscribe_results(show)
    await recorder.start()
    await worker.start()
    runner = web.AppRunner(
        create_app(settings, store=store, bus=bus, jobs=jobs, metrics_of=None), access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()

    redeploy_url = trigger_call_url(settings.public_url, redeploy, redeploy_secret)
    scale_url = trigger_call_url(settings.public_url, scale, scale_secret)
    broker = _broker_line(settings, bus)
    logs = f"Service logs: {log_file} (--verbose prints them here)\n" if log_file else ""
    click.echo(
        f"""
container-triggers dev: gateway on http://{host}:{port}, one worker, {broker}
Local cluster ({settings.local_state}): {DEMO_CLUSTER}/{DEMO_APP} with services {", ".join(DEMO_SERVICES)}
{logs}
Redeploy {DEMO_CLUSTER}/{DEMO_APP}:
  curl '{redeploy_url}'
Scale {DEMO_CLUSTER}/{DEMO_APP}/web out by 3, then in by 1:
  curl -X POST '{scale_url}&type=scale_out&step=3'
  curl -X POST '{scale_url}&type=scale_in&step=1'
Wait up to 30 s for the result (200, or 422 when it failed; curl --fail fails then):
  curl --fail '{redeploy_url}&wait=30'
Watch results in the browser: http://{host}:{port}/ui ({sign_in})
See the cluster, the history, the metrics:
  triggers local show
  triggers history
  curl http://{host}:{port}/metrics

Results appear below. Ctrl-C to stop.
"""
    )
    done = asyncio.Event()
    # Held through the clean-up too: a second Ctrl-C while it runs changes nothing.
    with on_stop_signal(done.set):
        try:
            await done.wait()
        finally:
            await runner.cleanup()
            await worker.stop()
            await recorder.stop()
            await bus.close()
            await orchestrator.close()
            await jobs.close()
            await store.close()
