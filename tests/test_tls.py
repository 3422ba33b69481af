"""`triggers gateway --tls-cert/--tls-key` serves HTTPS; a bad pair is one line."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import aiohttp

from tests.support.cli import triggers_cli
from tests.support.processes import free_port


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, made with openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_gateway_serves_https_with_a_certificate(env: dict[str, str], tmp_path: Path) -> None:
    """With --tls-cert and --tls-key, /healthz answers over HTTPS to a client trusting the cert."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *triggers_cli(),
        "gateway",
        "--port",
        str(port),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                try:
                    async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=trust) as answer:
                        assert answer.status == 200
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)  # polling until it listens
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


def test_a_bad_certificate_pair_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    """A key that is not a key, or a cert without its key: exit 1, one line naming the flags."""
    cert, _ = self_signed(tmp_path)
    for extra in (["--tls-cert", str(cert), "--tls-key", str(cert)], ["--tls-cert", str(cert)]):
        done = subprocess.run(
            [*triggers_cli(), "gateway", "--port", str(free_port()), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "--tls-key" in done.stderr
