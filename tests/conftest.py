"""Fixtures: a private RabbitMQ vhost and PostgreSQL database per test session, in-process
gateway and worker.

Tests talk to the real RabbitMQ and PostgreSQL on 127.0.0.1 (started by .ci/run when they
are not running); a missing server fails the tests rather than skipping them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from shared.broker import AmqpBus
from shared.jobs import JobRecord, JobStore, open_job_store
from shared.messages import (
    CommandEnvelope,
    ResultEvent,
    Scale,
    ServiceState,
    Source,
    Status,
    Target,
    new_job_id,
    utcnow,
)
from shared.settings import Settings
from shared.store import (
    PostgresTriggerStore,
    SqliteTriggerStore,
    SqlTriggerStore,
    TriggerStore,
    open_store,
)
from shared.topology import COMMAND_QUEUES, DEAD_QUEUE, RECORDER_QUEUE
from shared.triggers import Trigger, trigger_call_url
from tests.proxy import TcpProxy
from workers.orchestrators.base import Change, Orchestrator
from workers.orchestrators.local import LocalOrchestrator
from workers.recorder import Recorder
from workers.worker import Worker

T = TypeVar("T")

BROKER = os.environ.get("TRIGGERS_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672")
ADMIN_TOKEN = "test-admin-token-5b1f0c2e9d"
REDIS = os.environ.get("TRIGGERS_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES = os.environ.get("TRIGGERS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _rabbitmqctl(*args: str) -> str:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60, text=True)
    return done.stdout


def broker_list(amqp_url: str, kind: str, *columns: str) -> list[dict[str, Any]]:
    """`rabbitmqctl list_<kind> <columns>` of the URL's vhost: one dict a row."""
    vhost = amqp_url.rsplit("/", 1)[1]
    out = _rabbitmqctl("--quiet", f"list_{kind}", "-p", vhost, *columns, "--formatter", "json")
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def broker_queues(amqp_url: str) -> list[str]:
    """Every queue of the URL's vhost, as the broker lists them."""
    return sorted(row["name"] for row in broker_list(amqp_url, "queues", "name"))


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    """The AMQP URL of a new vhost of the shared broker, deleted afterwards."""
    vhost = f"triggers-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"{BROKER}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A vhost of its own, so tests never see another run's messages."""
    with private_vhost() as url:
        yield url


async def _pg_admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of its own for the session, dropped at the end."""
    name = f"triggers_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(POSTGRES, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_pg_admin(POSTGRES, f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A fresh schema in the session's database, so each test migrates from nothing."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(pg_database, f'CREATE SCHEMA "{schema}"'))
    return f"{pg_database}?search_path={schema}"


BACKENDS = ("sqlite", "postgresql")
# Runs a test once per database; every fixture below `settings` follows (see `backend`).
on_both_databases = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The test's database: SQLite, unless the test is marked `on_both_databases`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(params=BACKENDS)
def each_backend(request: pytest.FixtureRequest) -> str:
    """Each database in turn: a module whose every database test runs on both says
    `backend = each_backend` (tests that use no database run once)."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh `TRIGGERS_DATABASE` of the test's backend: a file, or a schema of its own."""
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite:///{tmp_path / 'triggers.db'}"


async def schema_versions(database_url: str) -> list[int]:
    """The migration versions recorded, in order, duplicates included."""
    query = "SELECT version FROM schema_version ORDER BY version"
    if database_url.startswith("postgresql://"):
        conn = await asyncpg.connect(database_url)
        try:
            return [r["version"] for r in await conn.fetch(query)]
        finally:
            await conn.close()
    conn2 = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    try:
        return [r[0] for r in conn2.execute(query)]
    finally:
        conn2.close()


@pytest.fixture
async def any_store(database_url: str) -> AsyncIterator[SqlTriggerStore]:
    """A started trigger store on the test's backend."""
    opened: SqlTriggerStore
    if database_url.startswith("postgresql://"):
        opened = PostgresTriggerStore(database_url, max_size=4)
    else:
        opened = SqliteTriggerStore(database_url.removeprefix("sqlite:///"))
    await opened.start()
    yield opened
    await opened.close()


@pytest.fixture
def settings(tmp_path: Path, amqp_url: str, database_url: str) -> Settings:
    """Settings pointing at this test's files and database and the session's vhost."""
    return Settings(
        amqp_url=amqp_url,
        database=database_url,
        local_state=str(tmp_path / "local-cluster.db"),
        public_url="http://127.0.0.1:8080",
        log_format="json",
        trigger_cache_ttl=1.0,
        retry_delays=(0.05, 0.1, 0.2),
        shutdown_timeout=5.0,
        audit_flush_interval=0.05,
    )


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of its own on the shared Redis; its keys are deleted afterwards.

    Redis is pinged first: the gateway falls back to its memory when Redis is missing, so
    without the ping a test of the shared state could pass without it.
    """
    import redis.asyncio as redis  # noqa: PLC0415 - only the shared-state tests need it

    prefix = f"triggers-test-{uuid.uuid4().hex[:8]}:"
    client = redis.from_url(REDIS)
    await client.ping()
    yield prefix
    async for key in client.scan_iter(match=f"{prefix}*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    """The environment a `triggers` subprocess needs to share this test's state."""
    return {
        **os.environ,
        "TRIGGERS_AMQP_URL": settings.amqp_url,
        "TRIGGERS_DATABASE": settings.database,
        "TRIGGERS_LOCAL_STATE": settings.local_state,
        "TRIGGERS_PUBLIC_URL": settings.public_url,
        "TRIGGERS_LOG_FORMAT": "json",
    }


def triggers_cli() -> list[str]:
    """The installed console script, next to this interpreter."""
    return [str(Path(sys.executable).with_name("triggers"))]


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run `triggers ARGS` without blocking the loop (a gateway may run in it); bounded."""
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def created_scale_trigger(env: dict[str, str]) -> str:
    """`triggers create` a scaling trigger for demo/shop/web; the query of its call URL."""
    code, out, err = await run_cli(
        env, "create", "--cluster", "demo", "--app", "shop", "--action", "scale",
        "--service", "web", "--json",
    )  # fmt: skip
    assert code == 0, err
    return str(json.loads(out)["url"].split("?", 1)[1])


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[TriggerStore]:
    """The test's trigger store."""
    opened = open_store(settings.database)
    yield opened
    await opened.close()


@pytest.fixture
async def jobs(settings: Settings) -> AsyncIterator[JobStore]:
    """The test's job history (the same database as the trigger store)."""
    opened = open_job_store(settings.database)
    yield opened
    await opened.close()


@pytest.fixture
def cluster(settings: Settings) -> LocalOrchestrator:
    """The test's local cluster, seeded with demo/shop (web: 2 replicas, api: 1)."""
    orchestrator = LocalOrchestrator(settings.local_state)
    orchestrator.cluster.set_service("demo", "shop", "web", replicas=2, image="nginx:1.27")
    orchestrator.cluster.set_service(
        "demo", "shop", "api", replicas=1, image="ghcr.io/acme/shop-api:1.4.2"
    )
    return orchestrator


async def _purge(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in [*COMMAND_QUEUES.values(), DEAD_QUEUE, RECORDER_QUEUE]:
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                channel = await connection.channel()
                continue
            await queue.purge()


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[AmqpBus]:
    """The gateway's bus, connected, with empty command queues."""
    amqp = AmqpBus.from_settings(settings, "test-gateway")
    await amqp.start()
    await _purge(settings.amqp_url)
    yield amqp
    await amqp.close()


@dataclass
class Gateway:
    """A running gateway and a client session to call it."""

    url: str
    http: aiohttp.ClientSession
    settings: Settings

    def call_url(self, trigger: Trigger, secret: str) -> str:
        """The trigger's URL on this gateway."""
        return trigger_call_url(self.url, trigger, secret)

    def call_url_for(self, created: dict[str, Any]) -> str:
        """The printed `url` of a created or rotated trigger, pointed at this gateway."""
        return f"{self.url}/hook/trigger?{created['url'].split('?', 1)[1]}"

    async def admin(
        self, method: str, path: str, body: object = None, *, token: str | None = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        """Call the admin API with the token; the status and the decoded JSON body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(
            method, f"{self.url}{path}", json=body, headers=headers
        ) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def running_gateways(
    settings: Settings, store: TriggerStore, bus: AmqpBus, count: int
) -> AsyncIterator[list[Gateway]]:
    """`count` gateways on ephemeral ports, sharing the store, the bus and a client session."""
    servers = [
        TestServer(create_app(settings, store=store, bus=bus), host="127.0.0.1")
        for _ in range(count)
    ]
    try:
        for server in servers:
            await server.start_server()
        async with aiohttp.ClientSession() as http:
            yield [
                Gateway(url=str(s.make_url("")).rstrip("/"), http=http, settings=settings)
                for s in servers
            ]
    finally:
        for server in servers:
            await server.close()


@pytest.fixture
async def gateway(settings: Settings, store: TriggerStore, bus: AmqpBus) -> AsyncIterator[Gateway]:
    """The gateway on an ephemeral port."""
    async with running_gateways(settings, store, bus, 1) as (one,):
        yield one


@pytest.fixture
async def shared_gateways(
    settings: Settings, store: TriggerStore, bus: AmqpBus, redis_prefix: str
) -> AsyncIterator[list[Gateway]]:
    """Two gateways sharing the test's Redis prefix, as several behind a load balancer."""
    shared = settings.with_(redis_url=REDIS, redis_prefix=redis_prefix)
    async with running_gateways(shared, store, bus, 2) as gateways:
        yield gateways


@dataclass
class Results:
    """Result events received on a queue bound to `triggers.results`."""

    events: list[ResultEvent] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, event: ResultEvent) -> None:
        """Record an event (the bus's handler)."""
        async with self.arrived:
            self.events.append(event)
            self.arrived.notify_all()

    def for_job(self, job_id: str) -> list[ResultEvent]:
        """Every event of one job."""
        return [e for e in self.events if e.job_id == job_id]

    async def wait_for(
        self, job_id: str, count: int = 1, within: float = 10.0
    ) -> list[ResultEvent]:
        """Wait until `count` events of the job arrived."""
        async with asyncio.timeout(within), self.arrived:
            await self.arrived.wait_for(lambda: len(self.for_job(job_id)) >= count)
        return self.for_job(job_id)


@pytest.fixture
async def results(settings: Settings) -> AsyncIterator[Results]:
    """Every result event published during the test."""
    collected = Results()
    amqp = AmqpBus.from_settings(settings, "test-results")
    await amqp.start()
    await amqp.subscribe_results(collected.add)
    yield collected
    await amqp.close()


@pytest.fixture
async def worker(
    settings: Settings, cluster: LocalOrchestrator, bus: AmqpBus
) -> AsyncIterator[Worker]:
    """A worker in this process, on its own connection."""
    amqp = AmqpBus.from_settings(settings, "test-worker")
    await amqp.start()
    running = Worker(settings, amqp, cluster)
    await running.start()
    yield running
    await running.stop()
    await amqp.close()


def scale_command(step: int = 1, direction: str = "scale_out") -> CommandEnvelope:
    """A scale command for demo/shop/web with a fresh job id, as the gateway would publish it."""
    return CommandEnvelope(
        job_id=new_job_id(),
        trigger_id="t" * 26,
        target=Target(cluster="demo", app="shop", service="web"),
        command=Scale(direction="scale_in" if direction == "scale_in" else "scale_out", step=step),
    )


def result_event(
    job_id: str, app: str = "shop", status: Status = "succeeded", *, ago: float = 0
) -> ResultEvent:
    """A result of demo/<app>/web (2 -> 5 replicas in 40 ms) issued `ago` seconds ago."""
    issued = utcnow() - timedelta(seconds=ago)
    state = ServiceState(replicas=2, image="nginx:1.27", revision=1)
    return ResultEvent(
        job_id=job_id,
        trigger_id="t" * 16,
        action="scale",
        cluster="demo",
        app=app,
        service="web",
        status=status,
        before={"web": state},
        after={"web": ServiceState(replicas=5, image="nginx:1.27", revision=1)},
        correlation_id=f"req-{job_id[:4]}",
        source=Source(remote="10.0.0.4", user_agent="curl/8.5"),
        issued_at=issued,
        finished_at=issued + timedelta(milliseconds=40),
        duration_ms=40.0,
    )


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_ready(base_url: str, within: float = 30.0) -> None:
    """Wait until a gateway at `base_url` answers /readyz with 200 (it connected to RabbitMQ)."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(within):
        while True:
            try:
                async with http.get(f"{base_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


@dataclass
class ServiceProcess:
    """A `triggers gateway|worker|recorder` subprocess: its JSON log lines and its port.

    The port is the gateway's HTTP port, or the metrics port of a worker or recorder.
    """

    port: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    logged: dict[str, asyncio.Event] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The base URL of what listens on the port."""
        return f"http://127.0.0.1:{self.port}"

    async def wait_logged(self, event: str, within: float = 10.0) -> dict[str, Any]:
        """The first log line with this event name, once it is written."""
        await asyncio.wait_for(self.logged.setdefault(event, asyncio.Event()).wait(), within)
        return next(line for line in self.lines if line.get("event") == event)


@contextlib.asynccontextmanager
async def service_process(env: dict[str, str], command: str) -> AsyncIterator[ServiceProcess]:
    """`triggers gateway --port P` (until /readyz is 200) or `triggers worker|recorder
    --metrics-port P` (until it logs `<command>.started`); SIGTERM and exit 0 after.

    A process that exits before it is ready fails the test at once, with its last lines.
    """
    running = ServiceProcess(port=free_port())
    option = "--port" if command == "gateway" else "--metrics-port"
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(), command, option, str(running.port), env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    stderr = process.stderr

    async def read() -> None:
        async for raw in stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": None, "text": raw.decode(errors="replace").rstrip()}
            running.lines.append(line)
            running.logged.setdefault(str(line.get("event")), asyncio.Event()).set()

    async def started() -> None:
        if command == "gateway":
            await wait_ready(running.url)
        else:
            await running.wait_logged(f"{command}.started", within=30)

    reader = asyncio.create_task(read())
    ready = asyncio.create_task(started())
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait({ready, exited}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            with contextlib.suppress(TimeoutError):  # the last lines, once written
                await asyncio.wait_for(asyncio.shield(reader), 5)
        if not ready.done() or exited.done():
            msg = f"`triggers {command}` did not get ready: {running.lines[-5:]}"
            raise AssertionError(msg)
        ready.result()
        yield running
    finally:
        ready.cancel()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(exited, 20)
        reader.cancel()
    assert process.returncode == 0, running.lines[-5:]


async def queue_depth(amqp_url: str, name: str) -> int:
    """Messages ready in a queue, by passive declare."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


@pytest.fixture
async def recorder(settings: Settings, jobs: JobStore, bus: AmqpBus) -> AsyncIterator[Recorder]:
    """A recorder in this process, on its own connection, writing the test's history."""
    amqp = AmqpBus(settings.amqp_url, role="test-recorder")
    await amqp.start()
    running = Recorder(settings, amqp, jobs)
    await running.start()
    yield running
    await running.stop()
    await amqp.close()


class WrappedOrchestrator:
    """Delegates everything to an inner orchestrator; tests override what they perturb."""

    def __init__(self, inner: Orchestrator) -> None:
        self.inner = inner
        self.name = inner.name

    async def state(self, target: Target) -> dict[str, ServiceState]:
        """The inner orchestrator's state."""
        return await self.inner.state(target)

    async def recorded(self, job_id: str, target: Target) -> Change | None:
        """The inner orchestrator's ledger."""
        return await self.inner.recorded(job_id, target)

    async def before_change(self, job_id: str) -> None:
        """Called first by `redeploy` and `scale`: a test holds or fails a job here."""

    async def redeploy(
        self,
        job_id: str,
        target: Target,
        *,
        image: str | None = None,
        issued_at: datetime | None = None,
    ) -> Change:
        """Redeploy through the inner orchestrator."""
        await self.before_change(job_id)
        return await self.inner.redeploy(job_id, target, image=image, issued_at=issued_at)

    async def scale(
        self,
        job_id: str,
        target: Target,
        *,
        delta: int,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
    ) -> Change:
        """Scale through the inner orchestrator."""
        await self.before_change(job_id)
        return await self.inner.scale(
            job_id, target, delta=delta, min_replicas=min_replicas, max_replicas=max_replicas
        )

    async def close(self) -> None:
        """The inner orchestrator is the fixture's to close."""


@pytest.fixture
async def proxy(settings: Settings) -> AsyncIterator[TcpProxy]:
    """A cuttable path to the test's RabbitMQ (see tests/proxy.py)."""
    parts = urlsplit(settings.amqp_url)
    tcp = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await tcp.start()
    yield tcp
    await tcp.close()


def through_proxy(settings: Settings, proxy: TcpProxy) -> Settings:
    """The settings with the broker reached through the proxy, and a short publish timeout."""
    parts = urlsplit(settings.amqp_url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    return settings.with_(amqp_url=parts._replace(netloc=netloc).geturl(), publish_timeout=2.0)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, what: str, within: float = 10.0
) -> T:
    """Call `probe` until it returns something other than None; fail after `within` seconds.

    For state another process writes at its own pace (the recorder, a reconnect), where
    there is no event of ours to await.
    """
    deadline = time.monotonic() + within
    while (value := await probe()) is None:
        if time.monotonic() > deadline:
            msg = f"{what} did not happen within {within:g} s"
            raise AssertionError(msg)
        await asyncio.sleep(0.05)
    return value


async def recorded(jobs: JobStore, job_id: str, status: str) -> JobRecord:
    """The job once the recorder has it in `status`."""

    async def probe() -> JobRecord | None:
        job = await jobs.get(job_id)
        return job if job is not None and job.status == status else None

    return await eventually(probe, what=f"job {job_id} recorded as {status}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Subprocesses the test started; killed at the end whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def start_worker(
    env: dict[str, str], processes: list[subprocess.Popen[bytes]], **extra_env: str
) -> subprocess.Popen[bytes]:
    """A `triggers worker` subprocess, registered for clean-up."""
    worker = subprocess.Popen(
        [*triggers_cli(), "worker"],
        env={**env, **extra_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(worker)
    return worker


async def scale_out_and_crash(
    gateway: Gateway,
    trigger: Trigger,
    secret: str,
    env: dict[str, str],
    processes: list[subprocess.Popen[bytes]],
    step: int,
) -> str:
    """Call a scaling trigger with a worker that SIGKILLs itself after applying; the job id."""
    doomed = start_worker(env, processes, TRIGGERS_FAULTS="crash-after-apply")
    url = gateway.call_url(trigger, secret) + f"&type=scale_out&step={step}"
    async with gateway.http.post(url) as response:
        assert response.status == 202
        job_id: str = (await response.json())["job_id"]
    async with asyncio.timeout(30):
        while doomed.poll() is None:
            await asyncio.sleep(0.05)
    assert doomed.returncode == -signal.SIGKILL
    return job_id


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """A /metrics page as {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
