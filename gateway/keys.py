"""Typed application keys, in one module."""

from __future__ import annotations

import asyncio

from aiohttp import web
from cachetools import TTLCache

from gateway.abuse import FailedAuthLimiter
from gateway.gauges import SharedGauges
from gateway.limits import CallLimits
from gateway.recent import RecentEvents
from gateway.waiter import ResultWaiter
from shared.audit import AuditLog
from shared.batch import WriteBehind
from shared.bus import Bus
from shared.jobs import JobRecord, JobStore
from shared.settings import Settings
from shared.store import TriggerStore
from shared.triggers import Trigger

__all__ = [
    "ACCEPTED",
    "AUDIT",
    "AUTH_LIMITER",
    "BUS",
    "CLIENT_ADDRESS",
    "ERROR",
    "JOBS",
    "LIMITS",
    "LOG_FIELDS",
    "METRICS_GAUGES",
    "RECENT_EVENTS",
    "SETTINGS",
    "STORE",
    "TRIGGER_CACHE",
    "TRIGGER_LOOKUPS",
    "WAITER",
]

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", TriggerStore)
BUS = web.AppKey("bus", Bus)
AUTH_LIMITER = web.AppKey("auth_limiter", FailedAuthLimiter)
JOBS = web.AppKey("jobs", JobStore)
WAITER = web.AppKey("waiter", ResultWaiter)
TRIGGER_CACHE = web.AppKey("trigger_cache", TTLCache[str, Trigger | None])
# Pushed digests, alert groups, deliveries and signatures acted on recently (gateway.recent).
RECENT_EVENTS = web.AppKey("recent_events", RecentEvents)
LIMITS = web.AppKey("limits", CallLimits)
AUDIT = web.AppKey("audit", AuditLog)
# Queue depths and job counts for /metrics, read at most every few seconds (gateway/metrics.py).
METRICS_GAUGES = web.AppKey("metrics_gauges", SharedGauges)
# Jobs this process accepted, written to the history in batches (gateway/jobs.py).
ACCEPTED = web.AppKey("accepted", WriteBehind[JobRecord])
# Store lookups in flight, by trigger id, so a cache miss under load costs one query.
TRIGGER_LOOKUPS = web.AppKey("trigger_lookups", dict[str, "asyncio.Future[Trigger | None]"])

# Fields the request's summary log line carries besides method, path and status.
LOG_FIELDS = web.RequestKey("log_fields", dict[str, str])
# The caller's address, as gateway/client.py worked it out (behind trusted proxies or not).
CLIENT_ADDRESS = web.RequestKey("client_address", str)
# The error code and detail of a non-2xx answer, set by the error middleware for the audit.
ERROR = web.RequestKey("error", tuple[str, str])
