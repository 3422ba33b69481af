"""A three-node RabbitMQ cluster under load: nodes SIGKILLed, a majority lost and regained.

Real nodes (tests/rabbitmq_nodes.py, joined with `rabbitmqctl join_cluster`) and real
`triggers gateway|worker|recorder` processes given every node's URL. The cluster is the
module's; each test works in a vhost of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.jobs import JobStore
from shared.settings import Settings
from shared.store import TriggerStore
from shared.topology import COMMAND_QUEUES
from shared.triggers import trigger_call_url
from tests.faults.harness import WorkerPool, applied_jobs
from tests.proxy import TcpProxy
from tests.rabbitmq_nodes import RabbitNode, rabbit_cluster
from tests.support.processes import ServiceProcess, service_process
from workers.orchestrators.local import LocalOrchestrator

# Three nodes boot and 1,000 calls take minutes on a small, busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PUBLISH_TIMEOUT = 2.0
CALLS = 1000
# Calls started per second, whatever the answers: a steady rate through both kills.
RATE = 10.0
BACK_WITHIN = 10.0


def worker_logs(directory: Path) -> str:
    """The end of each worker's log, for a failure message."""
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(directory.glob("*.log")))


def worker_log_lines(directory: Path) -> list[dict[str, Any]]:
    """Every JSON line the workers logged."""
    lines = []
    for path in sorted(directory.glob("*.log")):
        for raw in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
    return lines


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[RabbitNode]]:
    """Three RabbitMQ nodes of the module's own, in one cluster; stopped by PID after."""
    with rabbit_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def vhost(nodes: list[RabbitNode]) -> Iterator[str]:
    """A vhost of the test's own on the cluster."""
    name = f"triggers-cluster-{uuid.uuid4().hex[:8]}"
    up = next(n for n in nodes if n.accepting())
    up.ctl("add_vhost", name)
    up.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    for node in nodes:  # whichever is up by then
        if node.os_pid() is None:
            node.start()
            node.wait_ready()
    with contextlib.suppress(RuntimeError):
        nodes[0].ctl("delete_vhost", name)


def cluster_env(env: dict[str, str], nodes: list[RabbitNode], vhost: str) -> dict[str, str]:
    """The test's environment with every node's URL, a short publish timeout and checks."""
    return {
        **env,
        "TRIGGERS_AMQP_URL": ",".join(n.vhost_url(vhost) for n in nodes),
        "TRIGGERS_PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT),
        "TRIGGERS_CONSUMER_CHECK_INTERVAL": "1",
    }


def node_of(nodes: list[RabbitNode], address: str) -> RabbitNode:
    """The node behind a "host:port" that /readyz names."""
    port = int(address.rsplit(":", 1)[1])
    return next(n for n in nodes if n.amqp_port == port)


async def ready_node(http: aiohttp.ClientSession, gateway: ServiceProcess) -> str:
    """The node the gateway says (in /readyz) it publishes to."""
    async with http.get(f"{gateway.url}/readyz") as response:
        body = await response.json()
    assert response.status == 200, body
    return str(body["node"])


def leader_of(nodes: list[RabbitNode], vhost: str, queue: str) -> RabbitNode:
    """The node holding the quorum queue's leader, as the cluster reports it."""
    up = next(n for n in nodes if n.accepting())
    rows = json.loads(up.ctl("list_queues", "-p", vhost, "name", "leader", "--formatter", "json"))
    leader = next(row["leader"] for row in rows if row["name"] == queue)
    return next(n for n in nodes if n.nodename == leader)


@dataclass(frozen=True)
class Call:
    """One call made during the run and what became of it."""

    gateway: int
    started: float
    answered: float
    status: int  # 0: the connection failed
    retry_after: str | None
    job_id: str | None


async def call(http: aiohttp.ClientSession, url: str, gateway: int) -> Call:
    """POST one scale_out step=1 call; a connection error is status 0."""
    started = time.monotonic()
    try:
        async with http.post(f"{url}&type=scale_out&step=1") as response:
            body = await response.json(content_type=None)
            status, retry_after = response.status, response.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError):
        return Call(gateway, started, time.monotonic(), 0, None, None)
    job_id = body.get("job_id") if isinstance(body, dict) else None
    return Call(gateway, started, time.monotonic(), status, retry_after, job_id)


async def steady_load(
    http: aiohttp.ClientSession, urls: list[str], count: int, rate: float
) -> list[Call]:
    """`count` calls at `rate` per second, alternating between the gateways."""
    tasks = []
    start = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(call(http, urls[i % len(urls)], i % len(urls))))
    return await asyncio.gather(*tasks)


def first_202_after(calls: list[Call], gateway: int, moment: float) -> float | None:
    """Seconds from `moment` to the answer of the first call started after it that got 202."""
    accepted = [
        c.answered
        for c in calls
        if c.gateway == gateway and c.started >= moment and c.status == 202
    ]
    return (min(accepted) - moment) if accepted else None


def longest_refusal(calls: list[Call]) -> float:
    """The longest time a gateway answered nothing but refusals: from a refused call's
    start to the next 202's answer on the same gateway."""
    longest = 0.0
    for gateway in {c.gateway for c in calls}:
        since: float | None = None
        for c in sorted((c for c in calls if c.gateway == gateway), key=lambda c: c.started):
            if c.status != 202 and since is None:
                since = c.started
            elif c.status == 202 and since is not None:
                longest = max(longest, c.answered - since)
                since = None
    return longest


async def applied_exactly_once(
    accepted: dict[str, Call],
    settings: Settings,
    jobs: JobStore,
    cluster: LocalOrchestrator,
    start_replicas: int,
) -> tuple[set[str], int]:
    """Every 202 applied exactly once: in the ledger (one row per job id), in the
    replicas, and in the recorded history as succeeded. The refused calls applied anyway,
    and the redelivered duplicates the ledger absorbed."""
    async with asyncio.timeout(120):
        while not set(accepted) <= set(applied_jobs(settings.local_state)):
            await asyncio.sleep(0.5)
    ledger = applied_jobs(settings.local_state)
    assert all(ledger[job] == 1 for job in accepted)
    web = cluster.cluster.snapshot()["clusters"]["demo"]["apps"]["shop"]["services"]["web"]
    # A refused call whose publish reached the queue before its confirm was lost may be
    # applied too (its caller was told 503 and may retry): it is in the ledger.
    assert web["replicas"] == start_replicas + sum(ledger.values())
    async with asyncio.timeout(120):
        while True:
            records = [await jobs.get(job) for job in accepted]
            if all(r is not None and r.status == "succeeded" for r in records):
                break
            await asyncio.sleep(0.5)
    duplicates = sum(1 for r in records if r is not None and r.result and r.result.duplicate)
    return set(ledger) - set(accepted), duplicates


@contextlib.asynccontextmanager
async def services(env: dict[str, str], tmp_path: Path) -> AsyncIterator[list[ServiceProcess]]:
    """Two gateways and a recorder (ready), as subprocesses; stopped with SIGTERM after."""
    async with (
        service_process(env, "gateway") as one,
        service_process(env, "gateway") as two,
        service_process(env, "recorder") as recorder,
    ):
        yield [one, two, recorder]


async def test_nodes_killed_under_load(
    nodes: list[RabbitNode],
    vhost: str,
    settings: Settings,
    store: TriggerStore,
    jobs: JobStore,
    cluster: LocalOrchestrator,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """1,000 calls while the gateway's node and then the command queue's leader are
    SIGKILLed: each 202 applied exactly once, every other answer a 503 with Retry-After
    (or a connection error), 202 again within 10 s of each kill."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    start_replicas = 2
    environment = cluster_env(env, nodes, vhost)
    pool = WorkerPool(env=environment, log_dir=tmp_path)
    for _ in range(2):
        await pool.start()
    kills: list[tuple[str, float]] = []
    try:
        async with (
            services(environment, tmp_path) as (one, two, recorder),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        ):
            urls = [trigger_call_url(g.url, trigger, secret) for g in (one, two)]
            load = asyncio.create_task(steady_load(http, urls, CALLS, RATE))
            t0 = time.monotonic()
            await asyncio.sleep(CALLS / RATE * 0.1)
            # 1. The node the first gateway publishes to.
            victim = node_of(nodes, await ready_node(http, one))
            victim.kill(signal.SIGKILL)
            kills.append(("gateway's node", time.monotonic()))
            print(f"\nkilled {victim.nodename} (the gateway's) at {time.monotonic() - t0:.1f} s")
            await asyncio.sleep(3)
            await asyncio.to_thread(victim.start)
            await asyncio.to_thread(victim.wait_ready)
            print(f"{victim.nodename} back at {time.monotonic() - t0:.1f} s")
            await asyncio.sleep(3)
            # 2. The node holding the scale queue's leader (it may be any of the three).
            leader = await asyncio.to_thread(leader_of, nodes, vhost, COMMAND_QUEUES["scale"])
            assert not load.done(), "the load ended before the second kill: lower RATE"
            leader.kill(signal.SIGKILL)
            kills.append(("command queue leader's node", time.monotonic()))
            print(f"killed {leader.nodename} (the leader's) at {time.monotonic() - t0:.1f} s")
            await asyncio.sleep(3)
            await asyncio.to_thread(leader.start)
            await asyncio.to_thread(leader.wait_ready)
            calls = await asyncio.wait_for(load, CALLS / RATE + 120)
            lines = [*one.lines, *two.lines, *recorder.lines]

            accepted = {c.job_id: c for c in calls if c.status == 202 and c.job_id}
            refused = [c for c in calls if c.status != 202]
            # Never anything but 202, or 503 with Retry-After, or a failed connection.
            assert all(c.status == 0 or (c.status == 503 and c.retry_after) for c in refused), (
                sorted({(c.status, c.retry_after) for c in refused})
            )
            assert len(accepted) == len([c for c in calls if c.status == 202])
            # Back to 202 within 10 s of each kill, on each gateway.
            back = {
                (what, gateway): first_202_after(calls, gateway, at)
                for what, at in kills
                for gateway in (0, 1)
            }
            assert all(b is not None and b <= BACK_WITHIN for b in back.values()), (
                back,
                [
                    (line.get("timestamp"), line.get("event"), line.get("node"), line.get("error"))
                    for line in lines
                    if str(line.get("event", "")).startswith("bus.")
                ],
            )

            refused_applied, duplicates = await applied_exactly_once(
                accepted, settings, jobs, cluster, start_replicas
            )
    finally:
        await pool.stop_all()
    bus_lines = [line for line in lines if str(line.get("event", "")).startswith("bus.")]
    for line in bus_lines:
        print(
            line.get("timestamp"),
            line["event"],
            line.get("role"),
            line.get("node"),
            line.get("error", ""),
        )
    assert any(line["event"] == "bus.reconnected" and line.get("node") for line in bus_lines)
    assert not any("Traceback" in str(line) for line in lines)
    print(
        f"\ncluster: {len(calls)} calls, {len(kills)} node kills, {len(accepted)} answered 202 "
        f"and applied once, {len(refused)} refused ({sum(c.status == 503 for c in refused)} "
        f"503, {sum(c.status == 0 for c in refused)} connection errors; "
        f"{len(refused_applied)} of them applied anyway), {duplicates} redelivered "
        f"duplicates absorbed, 0 applied twice; back to 202 after "
        f"{', '.join(f'{b:.1f}' for b in back.values() if b is not None)} s; "
        f"longest 503 window {longest_refusal(calls):.1f} s"
    )


async def test_minority_answers_503_then_recovers(
    nodes: list[RabbitNode],
    vhost: str,
    store: TriggerStore,
    env: dict[str, str],
    settings: Settings,
    cluster: LocalOrchestrator,
    tmp_path: Path,
) -> None:
    """With two of three nodes down a call answers 503 (with Retry-After) within the
    publish timeout, never 202; once they are back, calls succeed, no process restarted."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    environment = cluster_env(env, nodes, vhost)
    pool = WorkerPool(env=environment, log_dir=tmp_path)
    await pool.start()
    try:
        async with (
            service_process(environment, "gateway") as gateway,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        ):
            url = trigger_call_url(gateway.url, trigger, secret)
            assert (await call(http, url, 0)).status == 202
            survivor = node_of(nodes, await ready_node(http, gateway))
            others = [n for n in nodes if n is not survivor]
            for node in others:
                node.kill(signal.SIGKILL)
            answers = [await call(http, url, 0) for _ in range(5)]
            for answer in answers:
                assert answer.status == 503, answer
                assert answer.retry_after
                # The publish timeout, plus the time a loaded machine takes to answer.
                assert answer.answered - answer.started < PUBLISH_TIMEOUT + 2.0, answer
            restarted = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(n.start) for n in others))
            await asyncio.gather(*(asyncio.to_thread(n.wait_ready) for n in others))
            # Quorum queues elect leaders again once a majority is back: 24 s on an idle
            # machine, over 60 s on a loaded one; the bound is what a test can wait.
            waiting: list[Call] = []
            async with asyncio.timeout(180):
                while (after := await call(http, url, 0)).status != 202:
                    waiting.append(after)
                    await asyncio.sleep(0.5)
            # The worker may still be moving back onto a node (quorum queues re-elect
            # leaders one by one): the same bound as the gateway's.
            try:
                async with asyncio.timeout(180):
                    while after.job_id not in applied_jobs(settings.local_state):
                        await asyncio.sleep(0.2)
            except TimeoutError:
                logs = worker_logs(tmp_path)
                pytest.fail(f"job {after.job_id} not applied within 180 s; worker logs:\n{logs}")
            applied = time.monotonic() - after.answered
            assert all(p.returncode is None for p in pool.processes)
            # A quorum queue without a leader counts no consumers though ours is there:
            # a worker on the surviving node must not take that for a lost consumer and
            # consume anew (which closes its whole connection after 15 s, again and again).
            logged = worker_log_lines(tmp_path)
            first = next(line for line in logged if line.get("event") == "bus.connected")
            stayed = first.get("node") == f"127.0.0.1:{survivor.amqp_port}"
            if stayed:
                assert not [
                    line
                    for line in logged
                    if line.get("event")
                    in (
                        "bus.disconnected",
                        "worker.consumers_restored",
                        "worker.consumer_check_failed",
                    )
                ], worker_logs(tmp_path)
            slowest = max(a.answered - a.started for a in answers)
            print(
                f"\nminority (the worker {'on the surviving node' if stayed else 'moved'}): "
                f"{len(answers)} calls answered 503 in at most {slowest:.1f} s "
                f"(publish timeout {PUBLISH_TIMEOUT:g} s); 202 again "
                f"{after.answered - restarted:.1f} s after the two nodes were started, "
                f"applied {applied:.1f} s after that 202; of the "
                f"{len(answers) + len(waiting)} calls refused meanwhile, "
                f"{len(applied_jobs(settings.local_state)) - 2} had been applied by then "
                "(their messages were on the surviving node)"
            )
    finally:
        await pool.stop_all()


WAIT = 20.0
# Past its wait, what a loaded machine may add: the publish, a store read, the answer.
WAIT_BOUND = 5.0
WAITING_CALLS = 20
# From a worker's result to its record in the history (the recorder may be moving nodes).
RECORD_LAG = 5.0


@dataclass(frozen=True)
class Waited:
    """One `wait=N` call and its answer."""

    wall: float  # time.time() when it started
    started: float
    answered: float
    status: int  # 0: the connection failed
    body: dict[str, Any]
    retry_after: str | None


async def waiting_call(http: aiohttp.ClientSession, url: str) -> Waited:
    """POST one scale_out step=1 call with wait=WAIT; a connection error is status 0."""
    wall, started = time.time(), time.monotonic()
    try:
        async with http.post(f"{url}&type=scale_out&step=1&wait={WAIT:g}") as response:
            body = await response.json(content_type=None)
            status, retry_after = response.status, response.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError):
        return Waited(wall, started, time.monotonic(), 0, {}, None)
    return Waited(wall, started, time.monotonic(), status, body, retry_after)


def queue_messages(nodes: list[RabbitNode], vhost: str, queue: str) -> int:
    """Messages in a queue (ready and unacked), as a node that is up reports them."""
    up = next(n for n in nodes if n.accepting())
    rows = json.loads(up.ctl("list_queues", "-p", vhost, "name", "messages", "--formatter", "json"))
    return next((int(row["messages"]) for row in rows if row["name"] == queue), 0)


async def judge_waited(
    calls: list[Waited], jobs: JobStore
) -> tuple[list[Waited], list[Waited], list[Waited]]:
    """Each call answered within its wait and the bound: with its result, or 202 with
    status_url (and not when the history had its result well before), or 503 with
    Retry-After. The three lists, in that order."""
    results = [c for c in calls if c.status in (200, 422)]
    timed_out = [c for c in calls if c.status == 202]
    refused = [c for c in calls if c.status not in (200, 202, 422)]
    for c in calls:
        assert c.answered - c.started <= WAIT + WAIT_BOUND, c
    for c in results:
        assert c.body["status"] == "succeeded", c
        assert c.body["result"]["after"], c
    for c in timed_out:
        assert c.body["status_url"].endswith(f"/v1/jobs/{c.body['job_id']}"), c
        job = await jobs.get(c.body["job_id"])
        finished = job.finished_at if job is not None else None
        assert finished is None or finished.timestamp() > c.wall + WAIT - RECORD_LAG, (c, job)
    for c in refused:
        assert c.status == 503, c
        assert c.retry_after, c
    return results, timed_out, refused


async def test_waiting_calls_answer_when_their_gateways_node_dies(
    nodes: list[RabbitNode],
    vhost: str,
    store: TriggerStore,
    jobs: JobStore,
    env: dict[str, str],
    settings: Settings,
    cluster: LocalOrchestrator,
    tmp_path: Path,
) -> None:
    """`wait=N` calls in flight when the gateway's node is SIGKILLed (their reply queue
    dies with it, and their results come before the gateway is on another node) answer
    with their result, or 202 with status_url if it has not come, within N plus a small
    bound; nothing else, no 5xx without Retry-After."""
    trigger, secret = await store.create(cluster="demo", app="shop", action="scale", service="web")
    victim, *others = nodes
    # The gateway reaches the other nodes through proxies this test holds closed after the
    # kill: the results come while it has no node, deterministically, not by a race with
    # its reconnect. The worker and the recorder use the other nodes directly.
    proxies = [TcpProxy("127.0.0.1", n.amqp_port) for n in others]
    for proxy in proxies:
        await proxy.start()
        await proxy.cut()
    through = [victim.vhost_url(vhost)]
    through += [f"amqp://guest:guest@127.0.0.1:{p.port}/{vhost}" for p in proxies]
    gateway_env = {**cluster_env(env, nodes, vhost), "TRIGGERS_AMQP_URL": ",".join(through)}
    environment = cluster_env(env, others, vhost)
    pool = WorkerPool(env=environment, log_dir=tmp_path)
    await pool.start()
    # The worker takes the commands and waits for the cluster file this test holds: the
    # calls wait with their commands on the queue, and the results all come at once, when
    # the file is let go, just after the gateway's node died.
    lock = sqlite3.connect(settings.local_state, isolation_level=None)
    try:
        async with (
            service_process(gateway_env, "gateway") as gateway,
            service_process(environment, "recorder"),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT * 3)) as http,
        ):
            url = trigger_call_url(gateway.url, trigger, secret)
            first = await waiting_call(http, url)
            assert first.status == 200, first  # the worker consumes, the results come back
            lock.execute("BEGIN IMMEDIATE")
            in_flight = [asyncio.create_task(waiting_call(http, url)) for _ in range(WAITING_CALLS)]
            scale_queue = COMMAND_QUEUES["scale"]
            async with asyncio.timeout(60):
                while await asyncio.to_thread(queue_messages, others, vhost, scale_queue) < (
                    WAITING_CALLS
                ):
                    await asyncio.sleep(0.2)
            victim.kill(signal.SIGKILL)
            lock.execute("ROLLBACK")
            killed = time.monotonic()
            # Calls made while the gateway has no node: 503 + Retry-After.
            after = []
            for _ in range(5):
                after.append(asyncio.create_task(waiting_call(http, url)))
                await asyncio.sleep(0.2)
            # Every result recorded in the history, then the gateway may move on.
            async with asyncio.timeout(60):
                while (await jobs.counts()).get("succeeded", 0) < 1 + WAITING_CALLS:
                    await asyncio.sleep(0.2)
            recorded = time.monotonic()
            for proxy in proxies:
                await proxy.restore()
            calls = [*(await asyncio.gather(*in_flight)), *(await asyncio.gather(*after))]
    finally:
        lock.close()
        await pool.stop_all()
        for proxy in proxies:
            await proxy.close()
    results, timed_out, refused = await judge_waited(calls, jobs)
    # Their results were all in the history before the gateway was on a node again.
    assert all(c.status == 200 for c in calls[:WAITING_CALLS]), calls[:WAITING_CALLS]
    longest = max(c.answered - c.started for c in calls)
    # The results its reply queue missed, read from the history instead.
    from_history = sum(1 for line in gateway.lines if line.get("result_from") == "history")
    print(
        f"\nwaiting calls: {len(calls)} calls with wait={WAIT:g} ({WAITING_CALLS} in flight "
        f"when the gateway's node was SIGKILLed, 5 made just after), {len(results)} answered "
        f"with the result ({from_history} of them read from the history), {len(timed_out)} "
        f"answered 202 with status_url, {len(refused)} answered 503 with Retry-After; "
        f"longest answer {longest:.1f} s (the gateway had no node for "
        f"{recorded - killed:.1f} s after the kill, while the results came)"
    )
