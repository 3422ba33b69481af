"""RabbitMQ nodes of a test's own on loopback: one to restart, or three in a cluster to kill.

The shared node on 127.0.0.1:5672 is never touched. Each node here gets its own name,
AMQP and distribution ports, config, data, log, feature-flag, plugin and pid files, so the
packaged `/etc/rabbitmq/rabbitmq.conf` (its 5672 listener) and `rabbitmq-env.conf` (its
node name) are not read. Nodes run as the `rabbitmq` user when the tests run as root (the
packaged scripts insist on it), so their directory is made reachable by that user. A node
starts in the background with its output in `out.log` (`-detached` would hide a boot
error), and stops by the PID of its Erlang VM, whatever the test did.

Ports come from `TRIGGERS_TEST_RABBIT_PORTS` (default 23000-23999), outside the kernel's
ephemeral range: a port found free there cannot be handed to another socket meanwhile by
`bind(0)`. A node that loses the race for a port anyway is started again on other ports.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RabbitNode", "rabbit_cluster", "rabbit_node"]

SBIN = Path("/usr/lib/rabbitmq/bin")
_PORTS = os.environ.get("TRIGGERS_TEST_RABBIT_PORTS", "23000-23999")
_BOOT_SECONDS = 120.0


def _port_range() -> range:
    low, _, high = _PORTS.partition("-")
    return range(int(low), int(high or low) + 1)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, taken: set[int] | None = None) -> list[int]:
    """`count` ports of the test range that nothing listens on now."""
    candidates = list(_port_range())
    random.shuffle(candidates)
    found = [p for p in candidates if p not in (taken or set()) and _free(p)][:count]
    if len(found) < count:
        msg = f"no {count} free ports in {_PORTS} (TRIGGERS_TEST_RABBIT_PORTS)"
        raise RuntimeError(msg)
    return found


def _node_user() -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that run RabbitMQ's scripts as their user.

    As root: the `rabbitmq` user, with its home (and so the Erlang cookie the CLI shares
    with every node). As anyone else: that user, with its own home and cookie.
    """
    if os.geteuid() != 0:
        return [], {"HOME": os.environ.get("HOME", "/tmp")}  # noqa: S108 - a fallback only
    user = pwd.getpwnam("rabbitmq")
    prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    return prefix, {"HOME": user.pw_dir}


def _owned_by_node_user(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("rabbitmq")
        for item in [path, *path.rglob("*")]:
            os.chown(item, user.pw_uid, user.pw_gid)


@dataclass
class RabbitNode:
    """One RabbitMQ node on 127.0.0.1, in a directory of its own."""

    name: str
    base: Path
    amqp_port: int = 0
    dist_port: int = 0
    # More lines for its rabbitmq.conf.
    config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def nodename(self) -> str:
        """The Erlang node name, as `rabbitmqctl -n` takes it."""
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        """The AMQP URL of the node's default vhost (guest may log in on loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def vhost_url(self, vhost: str) -> str:
        """The AMQP URL of one of the node's vhosts."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"

    def _environment(self) -> dict[str, str]:
        _, user_env = _node_user()
        base = self.base
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            **user_env,
            # An env file of our own, so the packaged one (NODENAME=rabbit@localhost) is
            # not sourced; loopback only, for epmd and the distribution port alike.
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            # Two schedulers: several nodes share a small machine with the tests.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 2:2 +sbwt none +sbwtdcpu none",
        }

    def _write_config(self) -> None:
        (self.base / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.amqp_port}\n"
            # A stopped peer is noticed in seconds, not the default minute.
            "net_ticktime = 10\n" + self.config
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        _owned_by_node_user(self.base)

    def start(self) -> None:
        """Start the node in the background (its output in `out.log`); see `wait_ready`."""
        if self.process is not None and self.process.poll() is None:
            return
        if not self.amqp_port:
            self.amqp_port, self.dist_port = free_ports(2)
        self._write_config()
        prefix, _ = _node_user()
        with (self.base / "out.log").open("ab") as out:
            self.process = subprocess.Popen(
                [*prefix, str(SBIN / "rabbitmq-server")],
                env=self._environment(),
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def accepting(self) -> bool:
        """Whether the node's AMQP listener answers (it opens last when a node boots)."""
        try:
            with socket.create_connection(("127.0.0.1", self.amqp_port), timeout=1) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return bool(sock.recv(1))  # connection.start
        except OSError:
            return False

    def wait_ready(self, within: float = _BOOT_SECONDS) -> None:
        """Return once the node accepts AMQP connections; fail with its last output if it died."""
        deadline = time.monotonic() + within
        while not self.accepting():
            if self.process is not None and self.process.poll() is not None:
                msg = f"RabbitMQ node {self.nodename} exited during boot:\n{self.tail()}"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"RabbitMQ node {self.nodename} not ready in {within:g} s:\n{self.tail()}"
                raise RuntimeError(msg)
            time.sleep(0.2)

    def tail(self, lines: int = 15) -> str:
        """The last lines of the node's output."""
        with contextlib.suppress(OSError):
            return "\n".join((self.base / "out.log").read_text().splitlines()[-lines:])
        return ""

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """`rabbitmqctl -n NODE ARGS`, as the node's user; its output."""
        prefix, _ = _node_user()
        done = subprocess.run(
            [*prefix, str(SBIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self._environment(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            msg = f"rabbitmqctl {' '.join(args)} on {self.nodename}: {done.stderr or done.stdout}"
            raise RuntimeError(msg)
        return done.stdout

    def os_pid(self) -> int | None:
        """The PID of the node's Erlang VM (from its pid file), if it runs."""
        try:
            pid = int((self.base / "pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the node's VM (SIGKILL: the node crashes; SIGSTOP: it hangs)."""
        pid = self.os_pid()
        if pid is not None:
            os.kill(pid, sig)
        if sig == signal.SIGKILL:
            self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        (self.base / "pid").unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the node by its PID: SIGTERM (a clean shutdown), SIGKILL if it lingers."""
        pid = self.os_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a stopped VM cannot act on SIGTERM
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while self.os_pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._reap()


def _new_base() -> Path:
    # Not under pytest's tmp_path: its parents are private to root, and the node's user
    # must reach every directory above its own.
    base = Path(tempfile.mkdtemp(prefix="triggers-rabbit-"))
    base.chmod(0o755)
    return base


def _boot(nodes: list[RabbitNode]) -> None:
    """Start the nodes together; one that lost its ports to a race boots again elsewhere."""
    for node in nodes:
        node.start()
    for node in nodes:
        for attempt in range(3):
            try:
                node.wait_ready()
                break
            except RuntimeError:
                if attempt == 2 or node.process is None or node.process.poll() is None:
                    raise
                node.amqp_port, node.dist_port = free_ports(2)
                node.start()


@contextlib.contextmanager
def rabbit_node(prefix: str = "triggers-test") -> Iterator[RabbitNode]:
    """One running node of the test's own; stopped and removed afterwards."""
    base = _new_base()
    node = RabbitNode(name=f"{prefix}-{uuid.uuid4().hex[:6]}", base=base / "node")
    try:
        _boot([node])
        yield node
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def rabbit_cluster(
    size: int = 3, prefix: str = "triggers-test", config: str = ""
) -> Iterator[list[RabbitNode]]:
    """`size` nodes joined in one cluster (`rabbitmqctl join_cluster` to the first), each
    with `config` added to its rabbitmq.conf.

    Stopped and removed afterwards, whatever happened.
    """
    base = _new_base()
    tag = uuid.uuid4().hex[:6]
    nodes = [
        RabbitNode(name=f"{prefix}-{tag}-{i + 1}", base=base / f"node{i + 1}", config=config)
        for i in range(size)
    ]
    try:
        _boot(nodes)
        first = nodes[0]

        def join(node: RabbitNode) -> None:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.nodename)
            node.ctl("start_app")
            node.wait_ready()

        # Side by side: each join is a few CLI runs, mostly waiting.
        with ThreadPoolExecutor(max_workers=size) as pool:
            list(pool.map(join, nodes[1:]))
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(base, ignore_errors=True)
