"""Fuzzing /hook/trigger: never a 5xx, never a publish, for anything that is not a valid call."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.store import SqliteTriggerStore
from shared.topology import COMMAND_QUEUES
from shared.triggers import Trigger, encode_trigger_url, new_secret
from tests.support.broker import queue_depth
from tests.support.gateways import Gateway

KNOWN = ("triggerUrl", "secret", "type", "step", "source", "wait")
_WAIT = re.compile(r"^[0-9]{1,4}(?:\.[0-9]{1,3})?$")  # the documented format
MAX_WAIT = 60.0
_STEP = re.compile(r"^(?:[1-9][0-9]?|100)$")


@dataclass(frozen=True)
class Known:
    """The two real triggers the fuzzer may stumble onto."""

    scale: Trigger
    scale_secret: str
    redeploy: Trigger
    redeploy_secret: str


def _token(t: Trigger) -> str:
    return encode_trigger_url(t.cluster, t.app, t.action, t.id)


def _is_valid(known: Known, method: str, params: list[tuple[str, str]], body: bytes | None) -> bool:
    """An independent oracle: is this exactly a valid call of one of the triggers?"""
    keys = [k for k, _ in params]
    if method not in ("GET", "POST") or len(set(keys)) != len(keys) or set(keys) - set(KNOWN):
        return False
    values = dict(params)
    # A POST body is a registry push or an alert (random bytes never are: 422) unless
    # source=plain says to ignore it; any other source= needs such a body.
    source = values.pop("source", None)
    # wait=N: seconds, a plain decimal from 0 to the gateway's bound (60 by default).
    wait = values.pop("wait", None)
    if (source is not None and source != "plain") or (
        wait is not None and not (_WAIT.match(wait) and float(wait) <= MAX_WAIT)
    ):
        return False
    if source is None and method == "POST" and body is not None and body.strip():
        return False
    for trigger, secret in (
        (known.scale, known.scale_secret),
        (known.redeploy, known.redeploy_secret),
    ):
        if values.get("triggerUrl") == _token(trigger) and values.get("secret") == secret:
            if trigger.action == "redeploy":
                return "type" not in values and "step" not in values
            return values.get("type") in ("scale_in", "scale_out") and bool(
                _STEP.match(values.get("step", ""))
            )
    return False


@pytest.fixture
async def known(store: SqliteTriggerStore) -> Known:
    """A scale and a redeploy trigger whose URLs the strategies mix into the noise."""
    scale, scale_secret = await store.create(
        cluster="demo", app="shop", action="scale", service="web"
    )
    redeploy, redeploy_secret = await store.create(cluster="demo", app="shop", action="redeploy")
    return Known(scale, scale_secret, redeploy, redeploy_secret)


# Placeholders resolved against the fixture's triggers inside the test.
PIECES = st.sampled_from(
    ["<scale-token>", "<redeploy-token>", "<scale-secret>", "<redeploy-secret>"]
)
VALUES = st.one_of(
    PIECES,
    st.sampled_from(
        ["scale_in", "scale_out", "1", "5", "100", "0", "101", "-1", "1.5", "1e9", "", "plain"]
    ),
    st.just(new_secret()),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9+/=]{0,60}", fullmatch=True),
)
RANDOM_PARAMS = st.lists(
    st.tuples(st.one_of(st.sampled_from(KNOWN), st.text(min_size=1, max_size=12)), VALUES),
    max_size=6,
)
VALID_BASES = st.sampled_from(
    [
        [
            ("triggerUrl", "<scale-token>"),
            ("secret", "<scale-secret>"),
            ("type", "scale_out"),
            ("step", "3"),
        ],
        [
            ("triggerUrl", "<scale-token>"),
            ("secret", "<scale-secret>"),
            ("type", "scale_in"),
            ("step", "100"),
        ],
        [("triggerUrl", "<redeploy-token>"), ("secret", "<redeploy-secret>")],
    ]
)


@st.composite
def mutated_calls(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A valid call with zero to three mutations: deep paths, not just the parser's front door."""
    params = list(draw(VALID_BASES))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop", "duplicate", "replace", "add"]))
        if kind == "drop" and params:
            params.pop(draw(st.integers(0, len(params) - 1)))
        elif kind == "duplicate" and params:
            params.append(params[draw(st.integers(0, len(params) - 1))])
        elif kind == "replace" and params:
            index = draw(st.integers(0, len(params) - 1))
            params[index] = (params[index][0], draw(VALUES))
        else:
            params.append((draw(st.sampled_from([*KNOWN, "x"])), draw(VALUES)))
    return params


PARAMS = st.one_of(RANDOM_PARAMS, mutated_calls(), mutated_calls())
HEADERS = st.dictionaries(
    st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
    st.from_regex(r"[ -~]{0,60}", fullmatch=True),
    max_size=4,
)
BODIES = st.one_of(st.none(), st.binary(max_size=2048), st.text(max_size=500).map(str.encode))
METHODS = st.sampled_from(["GET", "POST", "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])


@pytest.mark.slow
@hypothesis_settings(
    max_examples=300,
    deadline=None,
    # The gateway and triggers are set up once and shared by every example on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=METHODS, params=PARAMS, headers=HEADERS, body=BODIES)
async def test_fuzzed_calls_never_5xx_and_publish_only_when_valid(
    gateway: Gateway,
    known: Known,
    method: str,
    params: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes | None,
) -> None:
    """Any request: 4xx and no command unless it is exactly a valid call (then 202 and one)."""
    swap = {
        "<scale-token>": _token(known.scale),
        "<redeploy-token>": _token(known.redeploy),
        "<scale-secret>": known.scale_secret,
        "<redeploy-secret>": known.redeploy_secret,
    }
    params = [(k, swap.get(v, v)) for k, v in params]
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    before = sum([await queue_depth(gateway.settings.amqp_url, q) for q in COMMAND_QUEUES.values()])
    async with gateway.http.request(
        method, f"{gateway.url}/hook/trigger?{query}", headers=headers, data=body
    ) as response:
        status = response.status
        text = await response.text()
    after = sum([await queue_depth(gateway.settings.amqp_url, q) for q in COMMAND_QUEUES.values()])
    assert status < 500, text
    valid = _is_valid(known, method, params, body)
    event(f"valid call: {valid}, status {status}")
    if valid:
        assert status == 202, text
        assert after == before + 1
    else:
        assert 400 <= status < 500, (status, text)
        assert after == before
        for secret in (known.scale_secret, known.redeploy_secret):
            assert secret not in text
