"""Processes the benchmark starts: each in its own session, stopped by its process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["Service", "Usage", "broker_processes", "free_port", "usage", "wait_port"]


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, within: float) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + within
    while True:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            msg = f"nothing listens on 127.0.0.1:{port} after {within:g}s"
            raise TimeoutError(msg)
        time.sleep(0.05)


@dataclass
class Service:
    """One started command (and whatever it forks), with its output in a log file."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Service:
        """Start it in a new session so that stopping reaches its children too."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - argv built by the harness
                list(self.argv),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        """The leader's process id."""
        if self.process is None:
            msg = f"{self.name} was not started"
            raise RuntimeError(msg)
        return self.process.pid

    def alive(self) -> bool:
        """Whether the leader still runs."""
        return self.process is not None and self.process.poll() is None

    def processes(self) -> list[psutil.Process]:
        """The leader and its descendants."""
        try:
            leader = psutil.Process(self.pid)
            return [leader, *leader.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        # Children that outlived their leader (a prefork pool) share its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Usage:
    """CPU seconds used so far and the largest resident set (peak) of any one process."""

    cpu: float
    peak_rss_mb: float
    processes: int


def _peak_rss_mb(process: psutil.Process) -> float:
    # VmHWM is the high-water mark: the peak under load, not the figure after it.
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
    return 0.0


def usage(processes: Sequence[psutil.Process]) -> Usage:
    """CPU and peak memory of some processes (reads /proc only)."""
    cpu, peak, alive = 0.0, 0.0, 0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        cpu += times.user + times.system
        peak = max(peak, _peak_rss_mb(process))
        alive += 1
    return Usage(cpu=cpu, peak_rss_mb=peak, processes=alive)


def broker_processes(ports: Collection[int]) -> list[psutil.Process]:
    """The RabbitMQ nodes on this machine listening on one of `ports` (read-only: their CPU
    time), or the first node seen when none can be matched (its sockets may be hidden)."""
    nodes = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
    listening = []
    for node in nodes:
        try:
            sockets = node.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(s.status == psutil.CONN_LISTEN and s.laddr.port in ports for s in sockets):
            listening.append(node)
    return listening or nodes[:1]
