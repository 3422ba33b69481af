"""A private Docker Engine in Swarm mode for the tests: started here, stopped by PID.

Nothing of it is reachable from outside the machine and nothing on the host changes:
its own ``--data-root``, ``--exec-root``, pidfile and unix socket; no iptables, no IP
forwarding, no default bridge; the Swarm listens on 127.0.0.1 (a free port picked at run
time) and its routing mesh (``ingress``) is removed at once, so no service can publish a
port. ``docker_gwbridge`` is created first as an internal bridge without an IPv4 address,
so the host gets no address and no route from it. Images are built offline: a rootfs
holding Debian's static busybox, imported with ``docker import``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Dockerd",
    "DockerdUnavailable",
    "free_port_below_ephemeral",
    "running_swarm",
    "unmount_under",
]

GWBRIDGE_OPTIONS = (
    "--internal",
    "-o", "com.docker.network.bridge.inhibit_ipv4=true",
    "-o", "com.docker.network.bridge.enable_ip_masquerade=false",
)  # fmt: skip


class DockerdUnavailable(RuntimeError):
    """This machine cannot run the daemon (no binary, or it never answered)."""


def free_port_below_ephemeral(kind: int = socket.SOCK_STREAM, *, start: int = 20000) -> int:
    """A loopback port nothing uses now, below the ephemeral range a daemon binds later.

    Ports are tried from a random point so two test runs rarely pick the same one.
    """
    first = start + int.from_bytes(os.urandom(2), "big") % 10000
    for port in [*range(first, 32768), *range(start, first)]:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    msg = "no free port between 20000 and 32767"
    raise DockerdUnavailable(msg)


class Dockerd:
    """One dockerd with everything of its own under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = root / "dockerd.log"
        self.pidfile = root / "dockerd.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self.swarm_port = 0

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None, "dockerd is not running"
        return self.process.pid

    def start(self, within: float = 60.0, *, prefer_offline: bool = True) -> None:
        """Start the daemon and wait until its API (and its Swarm, once made) answers.

        `prefer_offline` sets DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: tasks run the local
        image and never pull (the machine has no registry to reach). Without it, tasks
        pull first, as on a real node, and fall back to a local image when the pull fails.
        """
        binary = shutil.which("dockerd")
        if binary is None or shutil.which("docker") is None:
            msg = "dockerd or docker is not installed (Debian: apt-get install docker.io)"
            raise DockerdUnavailable(msg)
        # containerd namespaces allow letters, digits and single separators only.
        namespace = f"triggers-{hashlib.sha256(str(self.root).encode()).hexdigest()[:12]}"
        command = [
            binary,
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.pidfile),
            "-H", self.url,
            "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--bridge=none",
            "--containerd-namespace", namespace,
            "--containerd-plugins-namespace", f"{namespace}-plugins",
            "--exec-opt", "native.cgroupdriver=cgroupfs",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"}
        if prefer_offline:
            env["DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"] = "1"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + within
        probe = ("node", "ls", "-q") if self.swarm_port else ("version",)
        while self.docker(*probe, check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                self.stop()
                msg = f"dockerd did not start; its log ends with:\n{tail}"
                raise DockerdUnavailable(msg)
            time.sleep(0.2)

    def stop(self, within: float = 30.0) -> None:
        """Stop the daemon by its PID (SIGTERM, then SIGKILL), and its containerd too."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a frozen daemon cannot stop
            process.terminate()
            try:
                process.wait(timeout=within)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        # dockerd stops the containerd it started; if it was killed, that one is ours too.
        # Either way it must be gone before a new daemon starts another on the same files.
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        try:
            containerd = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(containerd, signal.SIGTERM)
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                os.kill(containerd, 0)  # raises ProcessLookupError once it is gone
                time.sleep(0.1)
            os.kill(containerd, signal.SIGKILL)

    def restart(self, *, prefer_offline: bool = True) -> None:
        """Stop the daemon and start it again on the same data (its Swarm comes back)."""
        self.stop()
        self.start(prefer_offline=prefer_offline)

    def freeze(self) -> None:
        """SIGSTOP the daemon: connections are accepted by the kernel and never answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen daemon."""
        os.kill(self.pid, signal.SIGCONT)

    def docker(
        self,
        *args: str,
        check: bool = True,
        input_text: str | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon (`env`: variables added)."""
        result = subprocess.run(
            ["docker", *args],
            env={**os.environ, **(env or {}), "DOCKER_HOST": self.url},
            capture_output=True,
            text=True,
            input=input_text,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            msg = f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            raise RuntimeError(msg)
        return result

    def inspect(self, kind: str, name: str) -> Any:
        """``docker KIND inspect NAME`` as JSON (the first object)."""
        return json.loads(self.docker(kind, "inspect", name).stdout)[0]

    def init_swarm(self) -> None:
        """A one-node Swarm on loopback, without the routing mesh."""
        self.docker("network", "create", "-d", "bridge", *GWBRIDGE_OPTIONS, "docker_gwbridge")
        self.swarm_port = free_port_below_ephemeral()
        data_port = free_port_below_ephemeral(socket.SOCK_DGRAM)
        address = f"127.0.0.1:{self.swarm_port}"
        self.docker(
            "swarm", "init", "--advertise-addr", address, "--listen-addr", address,
            "--data-path-port", str(data_port),
        )  # fmt: skip
        # The routing mesh is what publishes ports; without it nothing can be published.
        self.docker("network", "rm", "ingress", input_text="y\n")

    def leave_swarm(self) -> None:
        """Remove every service, leave the Swarm, remove the bridge made for it."""
        services = self.docker("service", "ls", "-q", check=False).stdout.split()
        if services:
            self.docker("service", "rm", *services, check=False)
        self.docker("swarm", "leave", "--force", check=False)
        deadline = time.monotonic() + 30
        while self.docker("ps", "-q", check=False).stdout.strip():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.docker("network", "rm", "docker_gwbridge", check=False)

    def build_image(
        self,
        tag: str,
        *,
        cmd: Sequence[str] = ("/bin/sleep", "3600"),
        entrypoint: Sequence[str] | None = None,
        user: str | None = None,
    ) -> str:
        """Import a busybox rootfs as `tag` (offline); its image id."""
        busybox = shutil.which("busybox")
        if busybox is None:
            msg = "busybox is not installed (Debian: apt-get install busybox-static)"
            raise DockerdUnavailable(msg)
        with tempfile.TemporaryDirectory(dir=self.root) as rootfs:
            bin_dir = Path(rootfs, "bin")
            bin_dir.mkdir()
            shutil.copy(busybox, bin_dir / "busybox")
            for applet in ("sh", "sleep", "test", "id", "cat", "echo", "ls"):
                (bin_dir / applet).symlink_to("busybox")
            Path(rootfs, "tmp").mkdir()
            changes = ["-c", f"CMD {json.dumps(list(cmd))}"]
            if entrypoint is not None:
                changes += ["-c", f"ENTRYPOINT {json.dumps(list(entrypoint))}"]
            if user is not None:
                changes += ["-c", f"USER {user}"]
            archive = subprocess.run(
                ["tar", "-C", rootfs, "-c", "."],
                capture_output=True,
                check=True,
            ).stdout
        result = subprocess.run(
            ["docker", "import", *changes, "-", tag],
            env={**os.environ, "DOCKER_HOST": self.url},
            input=archive,
            capture_output=True,
            check=True,
        )
        return result.stdout.decode().strip()

    def log_count(self, text: str) -> int:
        """How many lines of the daemon's log contain `text`."""
        with self.log_path.open(errors="replace") as log:
            return sum(1 for line in log if text in line)


@contextlib.contextmanager
def running_swarm(parent: Path | None = None) -> Iterator[Dockerd]:
    """A started daemon in Swarm mode; stopped, its Swarm left, whatever happens."""
    # A short path: unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="trg-dockerd-", dir=parent or "/tmp"))  # noqa: S108 - mkdtemp makes it private (0700)
    daemon = Dockerd(root)
    try:
        daemon.start()
        daemon.init_swarm()
        yield daemon
    finally:
        try:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.thaw()
                daemon.leave_swarm()
        finally:
            daemon.stop()
            # dockerd leaves its netns and data-root bind mounts behind; unmount them, or
            # the tree cannot be removed.
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount point below `root`, deepest first."""
    prefix = f"{root}/"
    with Path("/proc/self/mountinfo").open() as info:
        points = [line.split()[4] for line in info if line.split()[4].startswith(prefix)]
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
