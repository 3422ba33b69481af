"""Typed application keys, in one module."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.abuse import FailedAuthLimiter
from gateway.gauges import SharedGauges
from gateway.limits import CallLimits
from gateway.lookup import TriggerCache
from gateway.outcomes import CallOutcome
from gateway.recent import RecentEvents
from gateway.shared_state import RedisOutage
from gateway.waiter import ResultWaiter
from shared.audit import AuditLog, UnauthenticatedTally
from shared.batch import WriteBehind
from shared.broker import Bus
from shared.jobs import JobRecord, JobStore
from shared.settings import Settings
from shared.store import TriggerStore

__all__ = [
    "ACCEPTED",
    "AUDIT",
    "AUTHENTICATED",
    "AUTH_LIMITER",
    "BUS",
    "CLIENT_ADDRESS",
    "ERROR",
    "JOBS",
    "LIMITS",
    "LOG_FIELDS",
    "METRICS_GAUGES",
    "OUTCOME",
    "RECENT_EVENTS",
    "SETTINGS",
    "STORE",
    "TRIGGER_CACHE",
    "UNAUTHENTICATED",
    "UNSEEN_WAITERS",
    "WAITER",
]

SETTINGS = web.AppKey("settings", Settings)
# The app's outage trackers (one log line per outage), by event name: see gateway.errors.
OUTAGES = web.AppKey("outages", dict[str, RedisOutage])
STORE = web.AppKey("store", TriggerStore)
BUS = web.AppKey("bus", Bus)
AUTH_LIMITER = web.AppKey("auth_limiter", FailedAuthLimiter)
JOBS = web.AppKey("jobs", JobStore)
WAITER = web.AppKey("waiter", ResultWaiter)
TRIGGER_CACHE = web.AppKey("trigger_cache", TriggerCache)
# Pushed digests, alert groups, deliveries and signatures acted on recently (gateway.recent).
RECENT_EVENTS = web.AppKey("recent_events", RecentEvents)
LIMITS = web.AppKey("limits", CallLimits)
AUDIT = web.AppKey("audit", AuditLog)
# Queue depths and job counts for /metrics, read at most every few seconds (gateway/metrics.py).
METRICS_GAUGES = web.AppKey("metrics_gauges", SharedGauges)
# Rejections before authentication, one audit entry per address and minute.
UNAUTHENTICATED = web.AppKey("unauthenticated", UnauthenticatedTally)
# Jobs this process accepted, written to the history in batches (gateway/jobs.py).
ACCEPTED = web.AppKey("accepted", WriteBehind[JobRecord])

# Lookups of a job not found yet that wait a moment for its record (gateway/jobs.py).
UNSEEN_WAITERS = web.AppKey("unseen_waiters", asyncio.Semaphore)

# Fields the request's summary log line carries besides method, path and status.
LOG_FIELDS = web.RequestKey("log_fields", dict[str, str])
# The caller's address, as gateway/client.py worked it out (behind trusted proxies or not).
CLIENT_ADDRESS = web.RequestKey("client_address", str)
# Set once the call's secret was verified: rejections before that are aggregated in the audit.
AUTHENTICATED = web.RequestKey("authenticated", bool)
# The error code and detail of a non-2xx answer, set by the error middleware for the audit.
ERROR = web.RequestKey("error", tuple[str, str])
# What became of an authenticated trigger call (gateway/calls.py), for the audit and metrics.
OUTCOME: web.RequestKey[CallOutcome] = web.RequestKey("outcome")
