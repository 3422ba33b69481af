"""The wire contract: commands, results and notices as JSON, their tags, bounds and keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest

from shared.messages import (
    CommandEnvelope,
    JobNotice,
    NotificationDelivery,
    Origin,
    Redeploy,
    ResultEvent,
    Scale,
    ServiceState,
    Source,
    Target,
    decode_command,
    decode_delivery,
    decode_job_event,
    decode_result,
    encode,
    new_job_id,
    utcnow,
)
from shared.topology import result_binding, result_routing_key, retry_routing_key
from tests.support.messages import result_event, scale_command

pytestmark = pytest.mark.unit

ISSUED = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def _redeploy(image: str | None = None) -> CommandEnvelope:
    return CommandEnvelope(
        job_id="j" * 32,
        trigger_id="t" * 26,
        target=Target(cluster="demo", app="shop"),
        command=Redeploy(image=image, only_matching=image is not None),
        source=Source(remote="10.0.0.4", origin=Origin(source="harbor", tag="1.5")),
        issued_at=ISSUED,
    )


def test_a_command_survives_encoding_with_its_tag() -> None:
    """A redeploy encodes with `type: redeploy.v1` and decodes back equal."""
    command = _redeploy("ghcr.io/acme/shop-api:1.5")
    wire = json.loads(encode(command))
    assert wire["command"]["type"] == "redeploy.v1"
    assert decode_command(encode(command)) == command


def test_a_scale_command_names_its_direction_and_action() -> None:
    """A scale command is tagged `scale.v1` and its envelope's action is `scale`."""
    command = scale_command(step=3, direction="scale_in")
    wire = json.loads(encode(command))
    assert wire["command"] == {
        "type": "scale.v1",
        "direction": "scale_in",
        "step": 3,
        "min_replicas": None,
        "max_replicas": None,
    }
    assert command.action == "scale"
    assert _redeploy().action == "redeploy"


@pytest.mark.parametrize("step", [0, 101, -1])
def test_a_step_outside_1_to_100_is_refused_on_decode(step: int) -> None:
    """The wire bounds of `step` hold when a command is decoded."""
    wire = json.loads(encode(scale_command()))
    wire["command"]["step"] = step
    with pytest.raises(msgspec.ValidationError, match="step"):
        decode_command(json.dumps(wire).encode())


def test_an_unknown_command_tag_is_refused() -> None:
    """A command version this worker does not know is a validation error, not a guess."""
    wire = json.loads(encode(_redeploy()))
    wire["command"]["type"] = "redeploy.v2"
    with pytest.raises(msgspec.ValidationError):
        decode_command(json.dumps(wire).encode())


def test_an_origin_leaves_out_what_the_sender_did_not_say() -> None:
    """Origin omits its empty fields on the wire."""
    wire = json.loads(encode(_redeploy()))
    assert wire["source"]["origin"] == {"source": "harbor", "tag": "1.5"}


def test_a_result_event_carries_the_contract_fields() -> None:
    """A result has job, trigger, action, target, status, before/after, error, finished_at."""
    event = result_event("a" * 32)
    wire = json.loads(encode(event))
    for name in ("job_id", "trigger_id", "action", "cluster", "app", "service", "status"):
        assert name in wire
    assert wire["before"] == {"web": {"replicas": 2, "image": "nginx:1.27", "revision": 1}}
    assert wire["after"]["web"]["replicas"] == 5
    assert wire["error"] is None
    assert wire["finished_at"].endswith("Z")
    assert decode_result(encode(event)) == event


def test_a_result_from_an_older_worker_decodes_with_defaults() -> None:
    """Fields added since v1 default, so results of older workers still decode."""
    old = {
        "job_id": "j" * 32,
        "trigger_id": "t",
        "action": "redeploy",
        "cluster": "demo",
        "app": "shop",
        "service": None,
        "status": "succeeded",
    }
    event = decode_result(json.dumps(old).encode())
    assert (event.before, event.duplicate, event.attempt, event.schema) == (
        {},
        False,
        1,
        "triggers.result.v1",
    )


def test_job_events_are_told_apart_by_their_schema() -> None:
    """The recorder's queue carries results and notices; each decodes as what it is."""
    notice = JobNotice(
        job_id="j" * 32, trigger_id="t", action="scale", cluster="demo", app="shop", service="web"
    )
    event = result_event("b" * 32)
    assert decode_job_event(encode(notice)) == notice
    assert decode_job_event(encode(event)) == event


def test_a_notification_delivery_knows_its_job() -> None:
    """A delivery's job id is its result's, or its notice's."""
    event = result_event("c" * 32)
    delivery = NotificationDelivery(sink="ops", result=event)
    assert decode_delivery(encode(delivery)).job_id == "c" * 32
    assert NotificationDelivery(sink="ops").job_id == ""


def test_job_ids_are_random_hex_and_timestamps_utc() -> None:
    """A job id is 32 hex digits, never repeated; utcnow is aware UTC."""
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert utcnow().tzinfo is UTC


def test_a_state_is_replicas_image_and_revision() -> None:
    """ServiceState is exactly the three fields the contract names."""
    wire = json.loads(msgspec.json.encode(ServiceState(replicas=1, image="x", revision=2)))
    assert wire == {"replicas": 1, "image": "x", "revision": 2}


def test_results_route_by_status_action_cluster_and_app() -> None:
    """`<status>.<action>.<cluster>.<app>`, and a binding selects by any of the four."""
    assert result_routing_key("failed", "scale", "demo", "shop") == "failed.scale.demo.shop"
    assert result_binding(app="shop") == "*.*.*.shop"
    assert result_binding(status="failed", cluster="demo") == "failed.*.demo.*"
    assert result_binding() == "*.*.*.*"


def test_retry_keys_name_the_action_and_the_delay_in_milliseconds() -> None:
    """One retry queue per action and delay: `scale.1500ms`."""
    assert retry_routing_key("scale", 1.5) == "scale.1500ms"
    assert retry_routing_key("redeploy", 0.05) == "redeploy.50ms"


def test_a_command_with_bounds_keeps_them() -> None:
    """A scaling trigger's bounds travel with the command for the worker to apply."""
    command = CommandEnvelope(
        job_id="j" * 32,
        trigger_id="t",
        target=Target(cluster="demo", app="shop", service="web", namespace="prod"),
        command=Scale(direction="scale_out", step=5, min_replicas=1, max_replicas=4),
    )
    decoded = decode_command(encode(command))
    assert isinstance(decoded.command, Scale)
    assert (decoded.command.min_replicas, decoded.command.max_replicas) == (1, 4)
    assert decoded.target.namespace == "prod"


def test_a_result_never_carries_a_secret_field() -> None:
    """No field of a command, result or source is named like a secret."""
    names = set()
    for struct in (CommandEnvelope, ResultEvent, Source, Origin, JobNotice):
        names |= set(struct.__struct_fields__)
    assert not {n for n in names if "secret" in n or "token" in n or "password" in n}
