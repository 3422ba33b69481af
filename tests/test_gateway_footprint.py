"""What a gateway on SQLite loads: not PyJWT (with OpenSSL's bindings, 10 MB) nor asyncpg
(3 MB); an OIDC trigger and a PostgreSQL store load them when they are used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

_HEAVY = ("jwt", "cryptography", "asyncpg")


def _loaded_after(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps([m for m in {_HEAVY!r} if m in sys.modules]))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded: list[str] = json.loads(out.strip().splitlines()[-1])
    return loaded


def test_the_gateway_starts_without_jwt_or_asyncpg() -> None:
    assert _loaded_after("import gateway.app, triggers.processes") == []


def test_oidc_verification_loads_jwt_when_used() -> None:
    code = (
        "import asyncio\nfrom gateway.sources.oidc import OidcError, verify_google_token\n"
        "try:\n"
        "    asyncio.run(verify_google_token('not-a-jwt', audience='a', email=None,"
        " jwks_url='http://127.0.0.1:1/keys'))\n"
        "except OidcError as exc:\n"
        "    print(exc)\n"
    )
    assert "jwt" in _loaded_after(code)
