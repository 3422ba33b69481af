"""The benchmark harness: start everything, measure in one run, print one table, clean up.

Phases, each bounded in time and on loopback only:
1. ceilings: an aiohttp no-op handler; the broker's own confirmed-publish rate;
2. adnanh/webhook with two hooks (answer first / answer after the command);
3. our gateway on a scaling trigger URL (no worker running, so it is measured alone);
4. the Celery peer's gateway (Flask + gunicorn), alone too;
5. end to end, ours (gateway + broker + worker + local cluster), the plain aiohttp +
   aio-pika pipeline and the Celery pipeline, all up and measured alternately, `rounds`
   times, N calls with a bound in flight each; each row is the median of its rounds;
   then ours in an open loop at fixed rates;
6. memory: a fresh gateway and worker, their resident memory after the first and the
   last window of `memory_calls` commands.
Everything runs in a private RabbitMQ vhost that is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import psutil
from yarl import URL

from bench.flows import EndToEnd, broker_ceiling, end_to_end, open_loop
from bench.load import LoadResult, http_load
from bench.procs import Service, broker_processes, free_port, usage, wait_port
from bench.straight import QUEUE as STRAIGHT_QUEUE
from shared.amqp_transport import BrokerNodes, connect_any, split_urls
from shared.settings import Settings
from shared.store import SqliteTriggerStore
from shared.topology import COMMAND_QUEUES, declare
from shared.triggers import hash_secret, new_secret, trigger_call_url
from workers.orchestrators.local import LocalCluster

__all__ = ["BenchConfig", "Report", "Target", "run_bench"]

BROKER = "amqp://guest:guest@127.0.0.1:5672"
CLUSTER, APP, SERVICE = "bench", "shop", "web"
CELERY_QUEUE = "bench.celery"


@dataclass(frozen=True)
class BenchConfig:
    """How much load, for how long, and which parts to run."""

    seconds: float = 5.0
    connections: int = 64
    calls: int = 5000
    in_flight: int = 64
    gateway_processes: int = 2
    e2e_processes: int = 1
    peers: bool = True
    setup: bool = True
    use_wrk: bool = True
    within: float = 120.0
    # Rounds: the gateways (ours, the plain one) and the pipelines (ours, plain, Celery)
    # measured alternately, each row the median.
    rounds: int = 3
    # Open loop: ours at this fixed rate, and at half the closed loop's median rate.
    open_rate: float = 200.0
    open_seconds: float = 10.0
    # Memory: commands through a fresh gateway and worker (0: not measured).
    memory_calls: int = 100_000
    broker: str = BROKER
    keep: Path | None = None


@dataclass
class Row:
    """One line of the table."""

    name: str
    rate: float
    unit: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    note: str = ""
    requests: int = 0
    # The rate of each round, when the row is the median of several.
    rounds: list[float] = field(default_factory=list)


@dataclass
class Target:
    """One of the performance targets, against this run's figures."""

    name: str
    measured: str
    met: bool | None


# The targets the benchmark is judged by (issue 21): ratio name, at least this much.
RATIO_TARGETS = {
    "gateway (1 process) / plain aiohttp + aio-pika gateway": 0.7,
    "end to end / celery end to end": 4.0,
}
# CPU per command end to end, gateway + worker + broker, at most (µs).
CPU_TARGET_US = 1200.0
# The open loop's p99 from call to result event at `open_rate`, at most.
OPEN_P99_TARGET_MS = 15.0
# Resident memory of the gateway and the worker after `memory_calls` commands, at most,
# and what the last window of commands may add (no growth).
RSS_TARGET_MB = 80.0
RSS_GROWTH_MB = 1.0
# The first and last this many commands of the memory phase are compared.
MEMORY_WINDOW = 10_000
# End-to-end CPU meter groups summed for the CPU target (the driver is not counted).
PIPELINE_CPU = {
    "ours": ("gateway", "worker", "broker"),
    "plain": ("straight gateway", "straight worker", "broker"),
}


@dataclass
class Report:
    """Everything measured, in the order it was measured."""

    vhost: str = ""
    rows: list[Row] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    cpu_per_command_us: dict[str, dict[str, float | None]] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    # The targets, each with what was measured against it and whether it was met
    # (None: not measured in this run, e.g. a peer skipped).
    targets: list[Target] = field(default_factory=list)
    # What the figures were measured on: they move with the machine (see docs/performance.md).
    machine: dict[str, str] = field(default_factory=dict)
    # Phases run again because the shared broker went away under them, and why.
    repeated: dict[str, str] = field(default_factory=dict)
    # Memory phase: per process, resident MB before, after the first window, before the
    # last window and after all commands.
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    # Wall-clock seconds each phase took (its last attempt).
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def row(self, name: str) -> Row | None:
        """The row of that name, if it was measured."""
        return next((r for r in self.rows if r.name == name), None)

    def add_load(self, name: str, result: LoadResult, note: str = "") -> Row:
        """A row from a load run."""
        if result.statuses:
            shown = ", ".join(
                f"{n}x {s or 'no answer'}" for s, n in sorted(result.statuses.items())
            )
            note = f"{note}; errors: {shown}"
        row = Row(
            name,
            result.rate,
            "req/s",
            result.p50_ms,
            result.p99_ms,
            result.errors,
            note=note,
            requests=result.requests,
        )
        self.rows.append(row)
        return row

    def to_json(self) -> dict[str, Any]:
        """A plain dict (for --json and the smoke test)."""
        return asdict(self)


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)  # noqa: S603 - fixed argv


def _on_vhost(broker: str, vhost: str) -> str:
    """Every node's URL of `broker` (one AMQP URL, or a cluster's, comma-separated) on `vhost`."""
    return ",".join(str(URL(url).with_path(f"/{vhost}")) for url in split_urls(broker))


@contextmanager
def _private_vhost() -> Iterator[str]:
    """The name of a vhost of the run's own, deleted afterwards.

    Made with `rabbitmqctl` (this machine's node, or `RABBITMQ_NODENAME`'s): a cluster's
    vhosts are the same on every node, so any of them serves, whichever URLs are down.
    """
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        # The broker is shared: if someone restarts it mid-run, wait for it to come back
        # rather than leave the vhost behind.
        for attempt in range(10):
            try:
                _rabbitmqctl("delete_vhost", vhost)
                break
            except subprocess.CalledProcessError as exc:
                if attempt == 9:
                    msg = f"could not delete vhost {vhost}: run `rabbitmqctl delete_vhost {vhost}`"
                    raise RuntimeError(msg) from exc
                time.sleep(3)


def _apt_setup(packages: dict[str, str], say: Callable[[str], None]) -> None:
    """Install missing peer tools with apt (root only); a failure only skips that peer."""
    missing = [pkg for tool, pkg in packages.items() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        say(f"setup: not root, cannot apt-get install {' '.join(missing)}")
        return
    say(f"setup: apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)  # noqa: S603 - fixed argv


def _cli(name: str) -> str:
    """A console script installed next to this interpreter."""
    return str(Path(sys.executable).with_name(name))


async def _wait_ready(url: str, within: float) -> None:
    """Ready once ten fresh connections in a row answer 200: with several processes on one
    port, each connects to the broker on its own and the kernel picks one per connection."""
    deadline = time.monotonic() + within
    ready = 0
    while ready < 10:
        try:
            async with aiohttp.ClientSession() as http, http.get(url) as response:
                ready = ready + 1 if response.status == 200 else 0
        except aiohttp.ClientError:
            ready = 0
        if time.monotonic() > deadline:
            msg = f"{url} not ready after {within:g}s"
            raise TimeoutError(msg)
        if ready == 0:
            await asyncio.sleep(0.1)


async def _wait_consumer(amqp_url: str, queue: str, within: float) -> None:
    deadline = time.monotonic() + within
    connection = await connect_any(amqp_url)
    async with connection:
        while True:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
                if (declared.declaration_result.consumer_count or 0) > 0:
                    return
            except aio_pika.exceptions.ChannelClosed:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
            if time.monotonic() > deadline:
                msg = f"no consumer on {queue} after {within:g}s"
                raise TimeoutError(msg)
            await asyncio.sleep(0.1)


async def _purge(amqp_url: str, *queues: str) -> None:
    connection = await connect_any(amqp_url)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
                await queue.purge()
            except aio_pika.exceptions.ChannelClosed:
                continue


def _processes(count: int, kind: str = "") -> str:
    """ "1 process", "2 gateway processes"."""
    return f"{count} {kind}{'process' if count == 1 else 'processes'}"


class _Meter:
    """CPU seconds per command of named process sets over one phase.

    Counted per process id: a set whose processes changed during the phase (a broker
    restarted by someone else) is reported as unknown rather than as a wrong figure.
    """

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]]) -> None:
        self._groups = groups
        self._before = {name: _cpu_by_pid(get()) for name, get in groups.items()}

    def per_command_us(self, commands: int, extra: dict[str, float]) -> dict[str, float | None]:
        """µs of CPU per command; None for a set whose processes changed (a restart)."""
        out: dict[str, float | None] = {}
        for name, get in self._groups.items():
            before = self._before[name]
            now = _cpu_by_pid(get())
            if set(now) != set(before):
                out[name] = None
                continue
            used = sum(cpu - before[pid] for pid, cpu in now.items())
            out[name] = round(used / max(commands, 1) * 1e6, 1)
        out.update({n: round(cpu / max(commands, 1) * 1e6, 1) for n, cpu in extra.items()})
        return out


def _median_cpu(per_round: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Each process's median CPU per command over the rounds."""
    medians: dict[str, float | None] = {}
    for name in per_round[0]:
        known = [us for cpu in per_round if (us := cpu.get(name)) is not None]
        medians[name] = round(statistics.median(known), 1) if known else None
    return medians


def _cpu_by_pid(processes: list[psutil.Process]) -> dict[int, float]:
    cpu: dict[int, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        cpu[process.pid] = times.user + times.system
    return cpu


@dataclass
class _Pipeline:
    """A running pipeline for the end-to-end rounds: where to call it, what to meter."""

    name: str
    who: str
    url: str
    note: str
    measured: dict[str, Callable[[], list[psutil.Process]]]
    memory: dict[str, Callable[[], list[psutil.Process]]]
    services: list[Service]


class _Bench:
    def __init__(self, config: BenchConfig, say: Callable[[str], None]) -> None:
        self.config = config
        self.say = say
        self.report = Report()
        self.services: list[Service] = []
        self.work = Path(tempfile.mkdtemp(prefix="triggers-bench-"))
        # Every node's URL on the run's vhost, comma-separated.
        self.amqp_url = ""

    def brokers(self) -> list[psutil.Process]:
        """The RabbitMQ nodes behind the run's URLs, for the CPU meter."""
        return broker_processes({port for _, port in BrokerNodes(self.amqp_url).addresses})

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Service:
        service = Service(name, argv, {**os.environ, **(env or {})}, self.work / f"{name}.log")
        self.services.append(service.start())
        return service

    async def run_phase(
        self, name: str, phase: Callable[[], Awaitable[None]], *, runs: int = 1
    ) -> None:
        """Run one phase, bounded in time (`runs` end-to-end runs at most, each bounded by
        `within`, twice over); run it again if the shared broker restarted.

        Others' fault tests stop and start the shared RabbitMQ node: a phase that loses
        its broker is thrown away (its rows too) and repeated, at most twice, and the
        report says so.
        """
        for attempt in range(1, 4):
            self.say(f"bench: {name}" + (f" (attempt {attempt})" if attempt > 1 else ""))
            rows = len(self.report.rows)
            began = time.monotonic()
            try:
                async with asyncio.timeout(self.config.within * 2 * runs):
                    await phase()
                self.report.phase_seconds[name] = round(time.monotonic() - began, 1)
            except Exception as exc:
                self.stop_all()
                del self.report.rows[rows:]
                if attempt == 3:
                    raise
                self.say(f"bench: {name} failed ({exc!r:.200}); waiting for the broker")
                await asyncio.to_thread(_rabbitmqctl, "await_startup")
                self.report.repeated[name] = f"{exc!r:.120}"
                continue
            return

    def stop_all(self) -> None:
        for service in reversed(self.services):
            service.stop()
        self.services.clear()

    async def load(self, url: str) -> LoadResult:
        return await http_load(
            url,
            connections=self.config.connections,
            seconds=self.config.seconds,
            use_wrk=self.config.use_wrk,
        )

    # -- phases -----------------------------------------------------------------------

    async def ceilings(self) -> None:
        port = free_port()
        for i in range(self.config.gateway_processes):
            self.start(f"noop-{i}", [sys.executable, "-m", "bench.noop", str(port)])
        wait_port(port, 15)
        await _wait_ready(f"http://127.0.0.1:{port}/", 15)
        result = await self.load(f"http://127.0.0.1:{port}/")
        self.report.add_load(
            "aiohttp no-op handler", result, f"{self.config.gateway_processes} processes"
        )
        for service in [s for s in self.services if s.name.startswith("noop-")]:
            service.stop()
        meter = _Meter({"broker": self.brokers})
        ceiling = await broker_ceiling(
            self.amqp_url, seconds=self.config.seconds, in_flight=self.config.in_flight
        )
        self.report.cpu_per_command_us["broker ceiling phase"] = meter.per_command_us(
            ceiling.messages, {"publisher (aio-pika)": ceiling.client_cpu}
        )
        self.report.rows.append(
            Row(
                "broker confirmed publishes",
                ceiling.rate,
                "msg/s",
                note=f"aio-pika, 1 connection, {self.config.in_flight} in flight, persistent, quorum",
            )
        )

    def straight(self) -> tuple[Service, str]:
        """The plain aiohttp + aio-pika gateway (bench/straight.py), one process."""
        port = free_port()
        service = self.start(
            "straight", [sys.executable, "-m", "bench.straight", str(port), self.amqp_url]
        )
        wait_port(port, 15)
        return service, f"http://127.0.0.1:{port}/"

    async def webhook(self) -> None:
        if shutil.which("webhook") is None:
            self.report.skipped["webhook"] = (
                "adnanh/webhook not installed (apt-get install webhook)"
            )
            return
        secret = new_secret()
        rule = {
            "match": {
                "type": "value",
                "value": secret,
                "parameter": {"source": "url", "name": "secret"},
            }
        }
        hooks = [
            {"id": "answer-first", "execute-command": "/bin/true", "trigger-rule": rule},
            {
                "id": "answer-after",
                "execute-command": "/bin/true",
                "include-command-output-in-response": True,
                "trigger-rule": rule,
            },
        ]
        path = self.work / "hooks.json"
        path.write_text(json.dumps(hooks))
        for hook, note in (
            ("answer-first", "default: answers before running /bin/true"),
            ("answer-after", "include-command-output-in-response"),
        ):
            # A fresh webhook per hook: answer-first leaves a backlog of commands running
            # after the load stops, which would slow the next measurement.
            port = free_port()
            service = self.start(
                f"webhook-{hook}",
                ["webhook", "-hooks", str(path), "-ip", "127.0.0.1", "-port", str(port)],
            )
            wait_port(port, 15)
            result = await self.load(f"http://127.0.0.1:{port}/hooks/{hook}?secret={secret}")
            self.report.add_load(f"webhook {hook}", result, note)
            service.stop()

    async def seed(self) -> tuple[dict[str, str], str, str]:
        """Our trigger and local cluster; returns the env, the call URL and the secret hash."""
        database = self.work / "triggers.db"
        state = self.work / "local-cluster.db"
        LocalCluster(state).set_service(CLUSTER, APP, SERVICE, replicas=1, image="nginx:1.27")
        trigger, secret = await SqliteTriggerStore(database).create(
            cluster=CLUSTER, app=APP, action="scale", service=SERVICE
        )
        env = {
            "TRIGGERS_AMQP_URL": self.amqp_url,
            "TRIGGERS_DATABASE": f"sqlite:///{database}",
            "TRIGGERS_LOCAL_STATE": str(state),
            "TRIGGERS_LOG_FORMAT": "json",
            # The driver is many callers on one address (as behind a proxy): the cap on
            # connections per address (64) would close a round's fresh connections while
            # the previous round's are still being torn down.
            "TRIGGERS_MAX_CONNECTIONS_PER_ADDRESS": "1024",
        }
        url = trigger_call_url("http://127.0.0.1:{port}", trigger, secret)
        return env, url + "&type=scale_out&step=1", hash_secret(secret)

    async def gateway(
        self, env: dict[str, str], url_template: str, processes: int
    ) -> tuple[Service, str]:
        """Start `processes` gateway processes on a fresh port, wait until it is ready."""
        port = free_port()
        gateway = self.start(
            f"gateway-{processes}",
            [_cli("triggers"), "gateway", "--port", str(port), "--processes", str(processes)],
            env,
        )
        await _wait_ready(f"http://127.0.0.1:{port}/readyz", 30)
        # Each process connects to the broker on its own: wait until all of them said so.
        deadline = time.monotonic() + 30
        while gateway.log.read_bytes().count(b'"bus.connected"') < processes:
            if time.monotonic() > deadline:
                msg = f"not all {processes} gateway processes reached the broker within 30 s"
                raise TimeoutError(msg)
            await asyncio.sleep(0.1)
        return gateway, url_template.replace("{port}", str(port))

    async def measure_publishing(
        self,
        measured: dict[str, Callable[[], list[psutil.Process]]],
        url: str,
        queues: Iterable[str],
    ) -> tuple[LoadResult, dict[str, float | None]]:
        """Load a gateway that publishes, with the CPU of it and the broker; then purge."""
        meter = _Meter({**measured, "broker": self.brokers})
        result = await self.load(url)
        cpu = meter.per_command_us(
            result.requests - result.errors, {"load generator": result.generator_cpu}
        )
        await _purge(self.amqp_url, *queues)
        return result, cpu

    def _gateway_row(
        self,
        name: str,
        note: str,
        phase: str,
        runs: list[tuple[LoadResult, dict[str, float | None]]],
    ) -> None:
        """The row of the round with the median rate (its latencies too), every round's
        rate in the note, and each process's median CPU per call."""
        ranked = sorted(runs, key=lambda run: run[0].rate)
        median = ranked[(len(ranked) - 1) // 2][0]
        if len(runs) > 1:
            shown = " / ".join(f"{result.rate:,.0f}" for result, _ in runs)
            note = f"{note}; median of {shown}"
        row = self.report.add_load(name, median, note)
        row.rounds = [round(result.rate, 1) for result, _ in runs]
        self.report.cpu_per_command_us[phase] = _median_cpu([cpu for _, cpu in runs])

    async def end_to_end(self) -> None:
        """Both pipelines up, measured alternately `rounds` times; each row the median.

        A shared VM's speed drifts within a run: alternating rounds expose ours and the
        Celery peer to the same drift, and the median discards an outlying round. The
        pipeline not being measured sits idle (its processes use no CPU to speak of).
        """
        ours = await self.our_pipeline()
        pipelines = [ours, await self.straight_pipeline()]
        celery = await self.celery_pipeline()
        if celery is not None:
            pipelines.append(celery)
        rounds: dict[str, list[tuple[EndToEnd, dict[str, float | None]]]] = {
            p.name: [] for p in pipelines
        }
        for _ in range(self.config.rounds):
            for pipeline in pipelines:
                meter = _Meter({**pipeline.measured, "broker": self.brokers})
                e2e = await end_to_end(
                    pipeline.url,
                    self.amqp_url,
                    calls=self.config.calls,
                    in_flight=self.config.in_flight,
                    within=self.config.within,
                )
                cpu = meter.per_command_us(
                    e2e.results, {"load generator + result subscriber": e2e.driver_cpu}
                )
                rounds[pipeline.name].append((e2e, cpu))
        for pipeline in pipelines:
            self._end_to_end_row(pipeline, rounds[pipeline.name])
        await self.open_loops(ours)
        for pipeline in pipelines:
            for name, processes in pipeline.memory.items():
                self.report.peak_rss_mb[name] = round(usage(processes()).peak_rss_mb, 1)
            for service in pipeline.services:
                service.stop()

    async def open_loops(self, ours: _Pipeline) -> None:
        """Ours in an open loop: at `open_rate`, then at half the closed loop's rate."""
        closed = self.report.row(ours.name)
        rates = [("our open loop, fixed rate", self.config.open_rate, "fixed rate")]
        if closed is not None and closed.rate > 0:
            rates.append(("our open loop, 50% of capacity", closed.rate / 2, "50% of capacity"))
        for name, rate, what in rates:
            run = await open_loop(
                ours.url,
                self.amqp_url,
                rate=rate,
                seconds=self.config.open_seconds,
                within=self.config.within,
            )
            self.report.rows.append(
                Row(
                    name,
                    run.rate,
                    "results/s",
                    run.p50_ms,
                    run.p99_ms,
                    run.calls - run.results,
                    f"{what}: {rate:,.0f} calls/s for {self.config.open_seconds:g} s,"
                    f" {run.results} of {run.calls} results, latency from when each call"
                    f" was due to its result event, {_processes(self.config.e2e_processes, 'gateway ')}",
                    requests=run.calls,
                )
            )

    async def memory(self) -> None:
        """A fresh gateway and worker: resident memory before, after the first window of
        commands, before the last window and after all `memory_calls` (closed loop)."""
        ours = await self.our_pipeline()
        total = self.config.memory_calls
        window = min(MEMORY_WINDOW, max(1, total // 4))
        chunks = [window]
        middle = total - 2 * window
        while middle > 0:
            chunks.append(min(middle, MEMORY_WINDOW))
            middle -= chunks[-1]
        chunks.append(window)
        kinds = {"gateway": ours.measured["gateway"], "worker": ours.measured["worker"]}
        memory: dict[str, dict[str, float]] = {name: {} for name in kinds}

        def sample(when: str) -> None:
            for name, processes in kinds.items():
                memory[name][when] = round(_largest_rss_mb(processes()), 1)

        sample("before")
        done = failed = 0
        for i, calls in enumerate(chunks):
            if i == len(chunks) - 1:
                sample("before last window")
            run = await end_to_end(
                ours.url,
                self.amqp_url,
                calls=calls,
                in_flight=self.config.in_flight,
                within=self.config.within,
            )
            done += run.results
            failed += run.calls - run.results
            if i == 0:
                sample("after first window")
        sample("after all")
        for figures in memory.values():
            figures["commands"] = float(done)
            figures["failed"] = float(failed)
            figures["window"] = float(window)
        self.report.memory = memory
        for service in ours.services:
            service.stop()

    def _end_to_end_row(
        self, pipeline: _Pipeline, rounds: list[tuple[EndToEnd, dict[str, float | None]]]
    ) -> None:
        calls = self.config.calls
        runs = [e2e for e2e, _ in rounds]
        rates = [e2e.rate for e2e in runs]
        complete = all(e2e.results == calls for e2e in runs)
        results = f"{calls} of {calls}" if complete else "/".join(str(e.results) for e in runs)
        shown = " / ".join(f"{rate:,.0f}" for rate in rates)
        self.report.rows.append(
            Row(
                pipeline.name,
                statistics.median(rates),
                "results/s",
                statistics.median(e2e.p50_ms for e2e in runs),
                statistics.median(e2e.p99_ms for e2e in runs),
                sum(e2e.calls - e2e.results for e2e in runs),  # failed calls and missing results
                (
                    f"{results} results in each of {len(runs)} rounds (median of {shown}),"
                    if len(runs) > 1
                    else f"{results} results,"
                )
                + f" {pipeline.note}",
                requests=sum(e2e.calls for e2e in runs),
                rounds=[round(rate, 1) for rate in rates],
            )
        )
        self.report.cpu_per_command_us[f"end to end ({pipeline.who})"] = _median_cpu(
            [cpu for _, cpu in rounds]
        )

    async def ours(self) -> None:
        """Our gateway alone (no worker), one process measured alternately with the plain
        gateway in `rounds` rounds (each row the median: a run of the plain gateway, bound
        by the broker's confirms, moved by 2x from one run to the next on one VM); then
        with `gateway_processes` processes, once."""
        env, url_template, _ = await self.seed()
        plain, plain_url = self.straight()
        ours, ours_url = await self.gateway(env, url_template, 1)
        runs: dict[str, list[tuple[LoadResult, dict[str, float | None]]]] = {
            "plain": [],
            "ours": [],
        }
        for _ in range(self.config.rounds):
            measured = {"straight gateway": plain.processes}
            runs["plain"].append(
                await self.measure_publishing(measured, plain_url, [STRAIGHT_QUEUE])
            )
            measured = {"gateway": ours.processes}
            runs["ours"].append(
                await self.measure_publishing(measured, ours_url, COMMAND_QUEUES.values())
            )
        plain.stop()
        ours.stop()
        self._gateway_row(
            "plain aiohttp + aio-pika gateway",
            "1 process, 202 after each confirm, nothing else",
            "plain gateway phase",
            runs["plain"],
        )
        self._gateway_row(
            "our gateway, 1 process",
            "scale trigger, 202 after each confirm",
            "gateway phase (1 process)",
            runs["ours"],
        )
        processes = self.config.gateway_processes
        if processes > 1:
            counted = _processes(processes)
            started, started_url = await self.gateway(env, url_template, processes)
            measured = {"gateway": started.processes}
            run = await self.measure_publishing(measured, started_url, COMMAND_QUEUES.values())
            self._gateway_row(
                f"our gateway, {counted}",
                "scale trigger, 202 after each confirm",
                f"gateway phase ({counted})",
                [run],
            )
            started.stop()

    async def straight_pipeline(self) -> _Pipeline:
        """The plain aiohttp + aio-pika gateway and worker (bench/straight.py): the floor."""
        port = free_port()
        gateway = self.start(
            "straight", [sys.executable, "-m", "bench.straight", str(port), self.amqp_url]
        )
        worker = self.start(
            "straight-worker", [sys.executable, "-m", "bench.straight", "worker", self.amqp_url]
        )
        wait_port(port, 15)
        await _wait_consumer(self.amqp_url, STRAIGHT_QUEUE, 30)
        return _Pipeline(
            "plain end to end",
            "plain",
            f"http://127.0.0.1:{port}/",
            f"{self.config.in_flight} in flight, aiohttp + aio-pika, confirmed, nothing else",
            measured={"straight gateway": gateway.processes, "straight worker": worker.processes},
            memory={},
            services=[worker, gateway],
        )

    async def our_pipeline(self) -> _Pipeline:
        """Gateway (`e2e_processes`, one by default: on 2 cores the worker and the broker
        need the other core more than a second gateway process does) and one worker."""
        env, url_template, _ = await self.seed()
        gateway, url = await self.gateway(env, url_template, self.config.e2e_processes)
        worker = self.start("worker", [_cli("triggers"), "worker"], env)
        await _wait_consumer(self.amqp_url, COMMAND_QUEUES["scale"], 30)
        gateways = _processes(self.config.e2e_processes, "gateway ")
        return _Pipeline(
            "our end to end",
            "ours",
            url,
            f"{self.config.in_flight} in flight, {gateways}",
            measured={"gateway": gateway.processes, "worker": worker.processes},
            memory={"gateway (largest process)": gateway.processes, "worker": worker.processes},
            services=[worker, gateway],
        )

    def _celery_missing(self) -> list[str]:
        return [t for t in ("celery", "gunicorn") if shutil.which(_cli(t)) is None]

    async def _celery_web(self) -> tuple[Service, str, dict[str, str]]:
        """Flask under gunicorn (2 sync workers) on a fresh port; its env for the worker."""
        env, url_template, secret_hash = await self.seed()
        state = self.work / "celery-cluster.db"
        LocalCluster(state).set_service(CLUSTER, APP, SERVICE, replicas=1, image="nginx:1.27")
        env = {
            **env,
            # Celery's own failover list: the same nodes, separated by semicolons.
            "BENCH_AMQP_URL": ";".join(split_urls(self.amqp_url)),
            "BENCH_LOCAL_STATE": str(state),
            "BENCH_SECRET_HASH": secret_hash,
            "BENCH_SERVICE": SERVICE,
        }
        port = free_port()
        web = self.start(
            "gunicorn",
            [
                _cli("gunicorn"),
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                # The app is imported before the workers fork, so they answer at once and
                # no import is counted in the CPU per call.
                "--preload",
                "bench.celery_peer:flask_app",
            ],
            env,
        )
        wait_port(port, 30)
        # The master binds the port before it forks its workers: wait for both, so the
        # CPU meter starts with the processes it will end with.
        deadline = time.monotonic() + 30
        while len(web.processes()) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return web, url_template.replace("{port}", str(port)), env

    async def celery(self) -> None:
        """The Celery peer's gateway alone (no Celery worker: tasks pile up, then purged)."""
        if missing := self._celery_missing():
            self.report.skipped["celery"] = (
                f"{', '.join(missing)} not installed (pip install -e '.[bench]')"
            )
            return
        web, url, _ = await self._celery_web()
        meter = _Meter({"gunicorn": web.processes, "broker": self.brokers})
        result = await self.load(url)
        self.report.add_load(
            "celery peer gateway (flask+gunicorn)", result, "2 workers, confirm_publish"
        )
        self.report.cpu_per_command_us["celery gateway phase"] = meter.per_command_us(
            result.requests - result.errors, {"load generator": result.generator_cpu}
        )
        web.stop()
        await _purge(self.amqp_url, CELERY_QUEUE)

    async def celery_pipeline(self) -> _Pipeline | None:
        """gunicorn and a Celery worker (prefork 2, late acks); None when not measured."""
        if not self.config.peers or self._celery_missing():
            return None
        web, url, env = await self._celery_web()
        worker = self.start(
            "celery",
            [
                _cli("celery"),
                "-A",
                "bench.celery_peer",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--loglevel",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            env,
        )
        await _wait_consumer(self.amqp_url, CELERY_QUEUE, 60)
        return _Pipeline(
            "celery peer end to end",
            "celery",
            url,
            "prefork 2, late acks",
            measured={"gunicorn": web.processes, "celery worker": worker.processes},
            memory={"celery worker (largest process)": worker.processes},
            services=[worker, web],
        )

    def ratios(self) -> None:
        def rate(name: str) -> float | None:
            row = self.report.row(name)
            return row.rate if row is not None and row.rate > 0 else None

        # Our gateway at its best of the process counts measured.
        measured = [r.rate for r in self.report.rows if r.name.startswith("our gateway, ")]
        ours = max(measured) if measured and max(measured) > 0 else None
        pairs = {
            "gateway (1 process) / plain aiohttp + aio-pika gateway": (
                rate("our gateway, 1 process"),
                rate("plain aiohttp + aio-pika gateway"),
            ),
            "gateway / webhook answer-first": (ours, rate("webhook answer-first")),
            "gateway / webhook answer-after": (ours, rate("webhook answer-after")),
            "gateway / broker ceiling": (ours, rate("broker confirmed publishes")),
            "gateway / aiohttp no-op": (ours, rate("aiohttp no-op handler")),
            "gateway / plain aiohttp + aio-pika gateway": (
                ours,
                rate("plain aiohttp + aio-pika gateway"),
            ),
            "end to end / celery end to end": (
                rate("our end to end"),
                rate("celery peer end to end"),
            ),
            "end to end / plain end to end": (rate("our end to end"), rate("plain end to end")),
            "gateway / celery gateway": (ours, rate("celery peer gateway (flask+gunicorn)")),
        }
        for name, (a, b) in pairs.items():
            if a is not None and b is not None:
                self.report.ratios[name] = round(a / b, 2)

    def targets(self) -> None:
        """Each target against this run's figures (ratios() first)."""
        report = self.report
        for name, least in RATIO_TARGETS.items():
            value = report.ratios.get(name)
            report.targets.append(
                Target(
                    f"{name} >= {least:g}x",
                    "not measured" if value is None else f"{value:.2f}x",
                    None if value is None else value >= least,
                )
            )
        ours, plain = (self.pipeline_cpu_us(who) for who in ("ours", "plain"))
        floor = "" if plain is None else f" (plain pipeline: {plain:,.0f} µs)"
        report.targets.append(
            Target(
                f"CPU per command end to end (gateway + worker + broker) <= {CPU_TARGET_US:,.0f} µs",
                "not measured" if ours is None else f"{ours:,.0f} µs{floor}",
                None if ours is None else ours <= CPU_TARGET_US,
            )
        )
        fixed = report.row("our open loop, fixed rate")
        report.targets.append(
            Target(
                f"open loop p99 <= {OPEN_P99_TARGET_MS:g} ms at {self.config.open_rate:g} calls/s",
                "not measured" if fixed is None else f"{fixed.p99_ms:.1f} ms",
                None
                if fixed is None or fixed.p99_ms is None
                else fixed.p99_ms <= OPEN_P99_TARGET_MS,
            )
        )
        report.targets.append(self.memory_target())

    def pipeline_cpu_us(self, who: str) -> float | None:
        """Gateway + worker + broker CPU per command end to end (µs), if all were metered."""
        figures = self.report.cpu_per_command_us.get(f"end to end ({who})", {})
        parts = [figures.get(name) for name in PIPELINE_CPU[who]]
        known = [us for us in parts if us is not None]
        return round(sum(known), 1) if len(known) == len(parts) else None

    def memory_target(self) -> Target:
        """Gateway and worker resident memory after the memory phase, and its growth."""
        memory = self.report.memory
        window = int(next(iter(memory.values()), {}).get("window", MEMORY_WINDOW))
        commands = int(next(iter(memory.values()), {}).get("commands", self.config.memory_calls))
        name = (
            f"gateway and worker resident memory <= {RSS_TARGET_MB:g} MB after"
            f" {self.config.memory_calls:,} commands, the last {window:,} adding"
            f" <= {RSS_GROWTH_MB:g} MB"
        )
        if not memory:
            return Target(name, "not measured", None)
        largest = max(m["after all"] for m in memory.values())
        growth = max(m["after all"] - m["before last window"] for m in memory.values())
        return Target(
            name,
            f"{largest:.1f} MB (the larger), last {window:,} +{max(growth, 0):.1f} MB,"
            f" {commands:,} commands",
            largest <= RSS_TARGET_MB and growth <= RSS_GROWTH_MB,
        )


def _largest_rss_mb(processes: list[psutil.Process]) -> float:
    """The resident memory of the largest of these processes, in MB (now, not the peak)."""
    largest = 0
    for process in processes:
        try:
            largest = max(largest, process.memory_info().rss)
        except psutil.Error:
            continue
    return largest / 2**20


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(server: dict[str, Any]) -> dict[str, str]:
    """Cores, CPU, Python and broker: what the figures depend on besides our code."""

    def text(value: object) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {
        "cores": str(os.cpu_count() or 0),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "broker": f"{text(server.get('product', '?'))} {text(server.get('version', '?'))}"
        f" ({text(server.get('platform', '?'))})",
    }


async def run_bench(config: BenchConfig, say: Callable[[str], None] = print) -> Report:
    """Run every phase in one private vhost; stop everything started, whatever happens.

    SIGTERM and SIGHUP (a CI job's timeout, a closed terminal) cancel the run as Ctrl-C
    does: the processes it started run in process groups of their own, so only the
    bench can stop them, and its vhost is deleted. `run_bench` then raises
    `asyncio.CancelledError`.
    """
    if config.peers and config.setup:
        _apt_setup({"wrk": "wrk", "webhook": "webhook"}, say)
    bench = _Bench(config, say)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    stop_on = (signal.SIGTERM, signal.SIGHUP)
    if task is not None:
        for signum in stop_on:
            with suppress(NotImplementedError, RuntimeError):  # not the main thread
                loop.add_signal_handler(signum, task.cancel)
    try:
        with _private_vhost() as vhost:
            bench.amqp_url = _on_vhost(config.broker, vhost)
            bench.report.vhost = vhost
            # The first node that answers; the processes started get every node's URL.
            connection = await connect_any(bench.amqp_url)
            async with connection:
                await declare(await connection.channel(), Settings().retry_delays)
                underlay = connection.transport
                server = underlay.connection.server_properties if underlay is not None else {}
                bench.report.machine = _machine(dict(server))
            phases: list[tuple[str, Callable[[], Awaitable[None]], int]] = [
                ("ceilings", bench.ceilings, 1)
            ]
            if config.peers:
                phases.append(("adnanh/webhook", bench.webhook, 1))
            phases.append(("our gateway", bench.ours, 2 * config.rounds + 1))
            if config.peers:
                phases.append(("celery peer gateway", bench.celery, 1))
            phases.append(("end to end", bench.end_to_end, 3 * config.rounds + 2))
            if config.memory_calls > 0:
                chunks = -(-config.memory_calls // MEMORY_WINDOW) + 2
                phases.append(("memory", bench.memory, chunks))
            if not config.peers:
                bench.report.skipped["webhook"] = "peers off (--no-peers)"
                bench.report.skipped["celery"] = "peers off (--no-peers)"
            for name, phase, runs in phases:
                await bench.run_phase(name, phase, runs=runs)
            bench.ratios()
            bench.targets()
    finally:
        for signum in stop_on:
            loop.remove_signal_handler(signum)
        bench.stop_all()
        if config.keep is None:
            shutil.rmtree(bench.work, ignore_errors=True)
        else:
            shutil.copytree(bench.work, config.keep, dirs_exist_ok=True)
            shutil.rmtree(bench.work, ignore_errors=True)
    return bench.report
