"""The one error table (gateway/errors.py) and what each call outcome is labelled."""

from __future__ import annotations

import pytest
import structlog
from aiohttp import web

from gateway.errors import ApiError, ErrorAnswer, error_answer
from gateway.outcomes import Accepted, Held, Ignored, Replayed
from shared.admin import AdminError
from shared.errors import BrokerUnavailable, RequestError, StoreUnavailable, TriggersError
from shared.jobs import JobRecord
from shared.messages import CommandEnvelope, Redeploy, ResultEvent, Target, utcnow

pytestmark = pytest.mark.unit


def test_api_and_admin_errors_share_the_one_root() -> None:
    """ApiError and AdminError are RequestErrors, under the project's one error root."""
    assert issubclass(ApiError, RequestError)
    assert issubclass(AdminError, RequestError)
    assert issubclass(RequestError, TriggersError)


def test_a_request_error_is_answered_with_its_own_status_code_and_headers() -> None:
    """A refusal keeps its status, code, detail and headers."""
    error = ApiError(429, "rate_limited", "slow down", headers={"Retry-After": "3"})
    assert error_answer(error) == ErrorAnswer(
        429, "rate_limited", "slow down", {"Retry-After": "3"}
    )
    assert error_answer(AdminError(404, "trigger_not_found", "no such trigger")) == ErrorAnswer(
        404, "trigger_not_found", "no such trigger"
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BrokerUnavailable("no confirm"), "broker_unavailable"),
        (StoreUnavailable("locked"), "store_unavailable"),
    ],
)
def test_an_outage_is_a_503_to_retry_after_a_few_seconds(error: Exception, code: str) -> None:
    """The broker or the store down: 503 with Retry-After, and not the outage's own text."""
    answer = error_answer(error, "/hook/trigger")
    assert (answer.status, answer.code, answer.headers) == (503, code, {"Retry-After": "5"})
    assert str(error) not in answer.detail


def test_aiohttps_not_found_gets_a_stable_code() -> None:
    """An unknown path is 404 not_found with a detail naming the endpoints."""
    answer = error_answer(web.HTTPNotFound())
    assert (answer.status, answer.code) == (404, "not_found")
    assert "/hook/trigger" in answer.detail


def test_an_unexpected_error_is_a_500_and_is_logged() -> None:
    """Anything else is 500 internal_error, with one log line saying where."""
    empty: dict[str, int] = {}
    with structlog.testing.capture_logs() as logs:
        try:
            empty["surprise"]
        except KeyError as exc:
            answer = error_answer(exc, "/v1/triggers")
    assert (answer.status, answer.code) == (500, "internal_error")
    assert "surprise" not in answer.detail
    assert [(e["event"], e["path"]) for e in logs] == [("gateway.unhandled_error", "/v1/triggers")]


def _accepted(wait: float = 0.0, status: str | None = None) -> Accepted:
    envelope = CommandEnvelope(
        job_id="a" * 32,
        trigger_id="t",
        target=Target(cluster="demo", app="shop"),
        command=Redeploy(),
        correlation_id="a" * 32,
    )
    result = None
    if status is not None:
        result = ResultEvent(
            job_id=envelope.job_id,
            trigger_id="t",
            action="redeploy",
            cluster="demo",
            app="shop",
            service=None,
            status=status,  # type: ignore[arg-type]  # a test passes a Status
        )
    return Accepted(envelope.job_id, envelope, JobRecord.accepted(envelope), None, wait, result)


@pytest.mark.parametrize(
    ("outcome", "label", "waited"),
    [
        (_accepted(), "accepted", None),
        (_accepted(5.0), "timed_out", "timed_out"),
        (_accepted(5.0, "succeeded"), "succeeded", "succeeded"),
        (_accepted(5.0, "failed"), "failed", "failed"),
        (_accepted(5.0, "rejected"), "rejected", None),
    ],
)
def test_an_accepted_call_is_labelled_by_what_it_waited_for(
    outcome: Accepted, label: str, waited: str | None
) -> None:
    """The log and metrics label of an accepted call, and the audit's wait outcome."""
    assert (outcome.label, outcome.waited) == (label, waited)


def test_the_other_outcomes_carry_their_fixed_labels() -> None:
    """Held, replayed and ignored calls are labelled as the metrics have always counted them."""
    envelope = _accepted().envelope
    held = Held("a" * 32, envelope, None, 1, utcnow())
    assert (held.label, Replayed("b" * 32).label, Ignored("cooldown", "wait").label) == (
        "pending_approval",
        "replayed",
        "ignored",
    )
