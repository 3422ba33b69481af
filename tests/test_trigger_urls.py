"""Trigger URLs in the managed container service's format."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.triggers import (
    Trigger,
    TriggerUrlError,
    decode_trigger_url,
    encode_trigger_url,
    hash_secret,
    new_secret,
    new_trigger_id,
    secret_matches,
    trigger_call_url,
)

pytestmark = pytest.mark.unit

SEED_REDEPLOY = "YzI4YTk5NzFkZWZkYzQ2MTJiOWZkNTM1MzY2ZDU1M2NifGNvbGxlY3RkLWJlbmNobWFya3xyZWRlcGxveXwxOGlxbjc1Z25uMmVzfA=="
SEED_SCALING = "Y2IxZjI5YzhhYjIwMzRlMjBiYjc2OGUzYTlmZDgyNDAyfHdvcmRwcmVzcy10ZXN0fHNjYWxpbmd8MTkzZmEyMXFwZXVwMXw="


def test_seed_redeploy_example_decodes() -> None:
    """The product document's redeploy URL decodes to its cluster, app, action and id."""
    ref = decode_trigger_url(SEED_REDEPLOY)
    assert (ref.cluster, ref.app, ref.action, ref.trigger_id) == (
        "c28a9971defdc4612b9fd535366d553cb",
        "collectd-benchmark",
        "redeploy",
        "18iqn75gnn2es",
    )


def test_seed_scaling_example_decodes() -> None:
    """The seed's 'scaling' action maps to our 'scale'."""
    ref = decode_trigger_url(SEED_SCALING)
    assert (ref.app, ref.action, ref.trigger_id) == ("wordpress-test", "scale", "193fa21qpeup1")


def test_encode_round_trips_and_matches_seed_layout() -> None:
    """Encoding gives base64 of 'cluster|app|action|id|' with the seed's action words."""
    token = encode_trigger_url("c1", "shop", "scale", "abcdefgh12")
    assert base64.b64decode(token).decode() == "c1|shop|scaling|abcdefgh12|"
    assert decode_trigger_url(token).action == "scale"


def test_tokens_of_valid_names_need_no_escaping() -> None:
    """Names are limited so that tokens never contain '+' or '/', which queries mangle."""
    alphabet = "abcXYZ019-_"
    tokens = {
        encode_trigger_url(f"c{a}{b}", f"{b}app{a}", "scale", "abcdefgh12")
        for a in alphabet
        for b in alphabet
    }
    assert not any("+" in t or "/" in t for t in tokens)


def test_url_safe_alphabet_and_missing_padding_are_accepted() -> None:
    """Callers that re-encode the token URL-safe and unpadded still reach the trigger."""
    token = encode_trigger_url("c1", "app-7", "redeploy", "abcdefgh12")
    safe = token.replace("+", "-").replace("/", "_").rstrip("=")
    assert decode_trigger_url(safe) == decode_trigger_url(token)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"c|a|redeploy|abcdefgh12").decode(), "trailing"),
        (base64.b64encode(b"c|a|redeploy|abcdefgh12|x|").decode(), "trailing"),
        (base64.b64encode(b"c|a|delete|abcdefgh12|").decode(), "action must be"),
        (base64.b64encode(b"c|a|redeploy|SHORT|").decode(), "malformed trigger id"),
        (base64.b64encode(b"c|a b|redeploy|abcdefgh12|").decode(), "cannot exist"),
        (base64.b64encode("c|é|redeploy|abcdefgh12|".encode()).decode(), "not valid base64"),
    ],
)
def test_malformed_trigger_urls_say_what_is_wrong(value: str, fragment: str) -> None:
    """Each malformed triggerUrl is refused with a message naming the problem."""
    with pytest.raises(TriggerUrlError, match=fragment):
        decode_trigger_url(value)


def test_ids_and_secrets_are_long_and_random() -> None:
    """Trigger ids carry 128 bits, secrets 256 bits, both from a CSPRNG."""
    ids = {new_trigger_id() for _ in range(200)}
    secrets = {new_secret() for _ in range(200)}
    assert len(ids) == len(secrets) == 200
    assert all(len(i) == 26 for i in ids)
    assert all(len(s) == 64 and int(s, 16) >= 0 for s in secrets)


def test_secret_matching_uses_the_hash() -> None:
    """Only the right secret matches the stored hash."""
    secret = new_secret()
    stored = hash_secret(secret)
    assert secret not in stored
    assert secret_matches(secret, stored)
    assert not secret_matches(new_secret(), stored)


def test_call_url_survives_query_parsing() -> None:
    """A printed URL parses back to the same trigger and secret."""
    trigger = Trigger(
        id="abcdefgh12",
        cluster="c1",
        app="shop-v2",
        action="scale",
        service="web",
        secret_hash="x",
        created_at=datetime.now(UTC),
    )
    url = trigger_call_url("http://h:1/", trigger, "ab" * 32)
    query = parse_qs(urlsplit(url).query)
    assert urlsplit(url).path == "/hook/trigger"
    assert decode_trigger_url(query["triggerUrl"][0]).app == trigger.app
    assert query["secret"] == ["ab" * 32]
