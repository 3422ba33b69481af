"""A private Docker registry (Debian's docker-registry) with htpasswd, on loopback.

The Engine treats 127.0.0.0/8 registries as insecure (plain HTTP) without configuration,
so no TLS is needed; the credentials are still required for every pull and push.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.dockerd import DockerdUnavailable, free_port_below_ephemeral

__all__ = ["Registry", "running_registry"]


@dataclass(frozen=True)
class Registry:
    """A running registry: its ``host:port`` and the one user's credentials."""

    address: str
    user: str
    password: str


@contextlib.contextmanager
def running_registry(
    root: Path,
    user: str = "ci",
    password: str = "s3cret-pw",  # noqa: S107 - a throwaway test credential
) -> Iterator[Registry]:
    """A registry requiring `user`/`password`, stopped by PID at the end."""
    binary = shutil.which("docker-registry")
    if binary is None or shutil.which("htpasswd") is None:
        msg = (
            "docker-registry or htpasswd is not installed (Debian: docker-registry, apache2-utils)"
        )
        raise DockerdUnavailable(msg)
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["htpasswd", "-Bbc", str(root / "htpasswd"), user, password],
        check=True,
        capture_output=True,
    )
    port = free_port_below_ephemeral()
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
        f"auth: {{htpasswd: {{realm: test, path: {root / 'htpasswd'}}}}}\n"
    )
    with (root / "registry.log").open("ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            except urllib.error.HTTPError:
                break  # 401: it is up and wants credentials
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    msg = f"docker-registry did not start: {(root / 'registry.log').read_text()[-1000:]}"
                    raise DockerdUnavailable(msg) from None
                time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", user, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
