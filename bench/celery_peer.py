"""The Celery peer: a Flask app (served by gunicorn) that calls a Celery task.

The way many teams would build this service: Flask checks the secret and sends a task
over the same RabbitMQ, with publisher confirms (``confirm_publish``) and late acks;
the task applies the same change to a local cluster file and publishes the same result
event on ``triggers.results``. Configured by ``BENCH_*`` variables set by the harness
(``BENCH_AMQP_URL``: one URL, or a cluster's nodes as Celery's failover list, ``;``-separated).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from flask import Flask, jsonify, request
from kombu.entity import Exchange

from shared.messages import Source, Target, encode, new_job_id
from shared.topology import RESULTS_EXCHANGE, result_routing_key
from shared.triggers import TriggerUrlError, decode_trigger_url, secret_matches
from workers.orchestrators.local import LocalCluster
from workers.worker import result_event

__all__ = ["apply_scale", "celery_app", "flask_app"]

QUEUE = "bench.celery"

celery_app = Celery("bench_peer", broker=os.environ.get("BENCH_AMQP_URL", "amqp://"))
celery_app.conf.update(
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)
_results = Exchange(RESULTS_EXCHANGE, type="topic", durable=True)  # type: ignore[no-untyped-call] # kombu is partly typed
_cluster: LocalCluster | None = None


def _local() -> LocalCluster:
    global _cluster  # noqa: PLW0603 - one per prefork child, opened on first use
    if _cluster is None:
        _cluster = LocalCluster(os.environ["BENCH_LOCAL_STATE"])
    return _cluster


@celery_app.task(name="bench.apply_scale")  # type: ignore[untyped-decorator] # celery is untyped
def apply_scale(job_id: str, trigger_id: str, target: dict[str, Any], delta: int) -> None:
    """Apply the change once per job, then publish its result event (confirmed)."""
    started = time.monotonic()
    where = Target(**target)
    change = _local().scale(job_id, where, delta)
    event = result_event(
        job_id=job_id,
        trigger_id=trigger_id,
        action="scale",
        target=where,
        change=change,
        error=None,
        attempt=1,
        correlation_id=job_id,
        source=Source(kind="http"),
        issued_at=None,
        started=started,
        orchestrator="local",
        requested_step=abs(delta),
        worker="celery",
    )
    with celery_app.producer_or_acquire() as producer:
        producer.publish(
            encode(event),
            exchange=_results,
            routing_key=result_routing_key(event.status, "scale", where.cluster, where.app),
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
        )


flask_app = Flask(__name__)
_SECRET_HASH = os.environ.get("BENCH_SECRET_HASH", "")


@flask_app.route("/hook/trigger", methods=["GET", "POST"])
def hook() -> Any:
    """Check the trigger URL and secret, send the task, answer 202 with the job id."""
    try:
        ref = decode_trigger_url(request.args.get("triggerUrl", ""))
    except TriggerUrlError as exc:
        return jsonify(error="invalid_trigger_url", detail=str(exc)), 400
    if not secret_matches(request.args.get("secret", ""), _SECRET_HASH):
        return jsonify(error="forbidden", detail="wrong secret"), 403
    step = int(request.args.get("step", "1"))
    delta = step if request.args.get("type") == "scale_out" else -step
    job_id = new_job_id()
    target = {"cluster": ref.cluster, "app": ref.app, "service": os.environ["BENCH_SERVICE"]}
    apply_scale.apply_async(args=(job_id, ref.trigger_id, target, delta))
    return jsonify(job_id=job_id, status="accepted"), 202
