"""Sinks, routes and approvals: the same operations on the local store or a remote gateway.

As `shared/admin.py` does for triggers: `StoreNotifyAdmin` works on the database (the CLI
on this machine, and the gateway's admin API itself), `triggers.remote.HttpNotifyAdmin` calls a
gateway's admin API (``--server``); both raise `AdminError` with the status, code and detail the
API gives, so the CLI behaves the same either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import msgspec

from shared.admin import AdminError
from shared.approvals import ApprovalList, ApprovalView, Decisions, approval_view
from shared.jobs import JobStore
from shared.messages import NotificationDelivery, ResultEvent, ServiceState, Source, new_job_id
from shared.notify_store import (
    ApprovalState,
    NotifyStore,
    Route,
    RouteCreate,
    RouteView,
    SinkCreate,
    SinkView,
    sink_view,
)
from shared.sinks import DeliveryFailed, SinkSender
from shared.store import TriggerStore

if TYPE_CHECKING:
    # The type only: the broker client loads with the processes that talk to it.
    from shared.broker import Bus

__all__ = [
    "ApproveRequest",
    "NotifyAdmin",
    "RejectRequest",
    "RouteList",
    "SinkList",
    "SinkTest",
    "StoreNotifyAdmin",
    "route_view",
    "sample_delivery",
]


class SinkList(msgspec.Struct, kw_only=True):
    """``GET /v1/sinks``."""

    sinks: list[SinkView]


class RouteList(msgspec.Struct, kw_only=True):
    """``GET /v1/routes``."""

    routes: list[RouteView]


class SinkTest(msgspec.Struct, kw_only=True):
    """``POST /v1/sinks/{name}/test``: whether the sample went through."""

    sink: str
    delivered: bool
    job_id: str
    error: str | None = None


class ApproveRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/approvals/{job_id}/approve``: who approves (recorded)."""

    approver: str = "admin-api"


class RejectRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/approvals/{job_id}/reject``: who rejects, and why."""

    reason: str
    approver: str = "admin-api"


def route_view(route: Route) -> RouteView:
    """A route as shown."""
    return RouteView(
        id=route.id,
        sink=route.sink,
        cluster=route.cluster,
        app=route.app,
        statuses=list(route.statuses),
        created_at=route.created_at,
    )


def sample_delivery(sink: str) -> NotificationDelivery:
    """A made-up succeeded redeploy, for `triggers notify test` (its job id is new)."""
    before = ServiceState(replicas=2, image="example/web:1.0", revision=1)
    after = ServiceState(replicas=2, image="example/web:1.1", revision=2)
    event = ResultEvent(
        job_id=new_job_id(),
        trigger_id="test",
        action="redeploy",
        cluster="example",
        app="web",
        service=None,
        status="succeeded",
        before={"web": before},
        after={"web": after},
        detail="a test notification from `triggers notify test`",
        source=Source(kind="test", remote="127.0.0.1", user_agent="triggers notify test"),
        duration_ms=1234.0,
    )
    return NotificationDelivery(sink=sink, result=event)


class NotifyAdmin(Protocol):
    """Sinks, routes and approvals, wherever they live."""

    async def create_sink(self, request: SinkCreate) -> SinkView:
        """Create a sink; a webhook's view carries its signing `secret`, shown this once."""
        ...

    async def list_sinks(self) -> SinkList:
        """Every sink (secrets redacted)."""
        ...

    async def delete_sink(self, name: str) -> SinkView:
        """Delete a sink and its routes."""
        ...

    async def test_sink(self, name: str) -> SinkTest:
        """Send a sample notification now."""
        ...

    async def add_route(self, request: RouteCreate) -> RouteView:
        """Add a global route."""
        ...

    async def list_routes(self) -> RouteList:
        """Every global route."""
        ...

    async def delete_route(self, route_id: int) -> RouteView:
        """Delete a route."""
        ...

    async def list_approvals(self, state: ApprovalState | None) -> ApprovalList:
        """Held calls, newest first."""
        ...

    async def approve(self, job_id: str, approver: str) -> ApprovalView:
        """Approve a held call (a unique job id prefix is enough)."""
        ...

    async def reject(self, job_id: str, approver: str, reason: str) -> ApprovalView:
        """Reject a held call."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _no_sink(name: str) -> AdminError:
    return AdminError(
        404, "sink_not_found", f"no sink {name[:64]!r}; `triggers sink list` shows them"
    )


class StoreNotifyAdmin:
    """The operations on the database; approvals publish through `bus`."""

    def __init__(
        self,
        store: NotifyStore,
        triggers: TriggerStore,
        bus: Bus | None,
        *,
        public_url: str,
        jobs: JobStore | None = None,
        smtp_cafile: str | None = None,
    ) -> None:
        self.store = store
        self._triggers = triggers
        self._bus = bus
        self._jobs = jobs
        self._public_url = public_url
        self._smtp_cafile = smtp_cafile

    def _decisions(self) -> Decisions:
        if self._bus is None:
            raise AdminError(503, "broker_unavailable", "deciding a call needs the broker")
        return Decisions(self.store, self._triggers, self._bus, self._jobs)

    async def create_sink(self, request: SinkCreate) -> SinkView:
        """Create a sink."""
        try:
            sink = await self.store.create_sink(request)
        except ValueError as exc:
            raise AdminError(422, "invalid_body", str(exc)) from None
        if sink is None:
            msg = f"a sink named {request.name!r} exists; delete it first or pick another name"
            raise AdminError(409, "sink_exists", msg)
        return sink_view(sink, with_secret=True)

    async def list_sinks(self) -> SinkList:
        """Every sink."""
        return SinkList(sinks=[sink_view(s) for s in await self.store.list_sinks()])

    async def delete_sink(self, name: str) -> SinkView:
        """Delete a sink and its routes."""
        sink = await self.store.get_sink(name)
        if sink is None or not await self.store.delete_sink(name):
            raise _no_sink(name)
        return sink_view(sink)

    async def test_sink(self, name: str) -> SinkTest:
        """Send a sample now, straight from here (not through the notifier)."""
        sink = await self.store.get_sink(name)
        if sink is None:
            raise _no_sink(name)
        delivery = sample_delivery(name)
        sender = SinkSender(self._public_url, smtp_cafile=self._smtp_cafile)
        try:
            await sender.send(sink, delivery)
        except DeliveryFailed as exc:
            return SinkTest(sink=name, delivered=False, job_id=delivery.job_id, error=exc.reason)
        finally:
            await sender.close()
        return SinkTest(sink=name, delivered=True, job_id=delivery.job_id)

    async def add_route(self, request: RouteCreate) -> RouteView:
        """Add a route to an existing sink."""
        if await self.store.get_sink(request.sink) is None:
            raise _no_sink(request.sink)
        return route_view(await self.store.add_route(request))

    async def list_routes(self) -> RouteList:
        """Every route."""
        return RouteList(routes=[route_view(r) for r in await self.store.list_routes()])

    async def delete_route(self, route_id: int) -> RouteView:
        """Delete a route."""
        found = [r for r in await self.store.list_routes() if r.id == route_id]
        if not found or not await self.store.delete_route(route_id):
            msg = f"no route {route_id}; `triggers notify route list` shows them"
            raise AdminError(404, "route_not_found", msg)
        return route_view(found[0])

    async def list_approvals(self, state: ApprovalState | None) -> ApprovalList:
        """Held calls."""
        found = await self.store.list_approvals(state)
        return ApprovalList(approvals=[approval_view(a) for a in found])

    async def approve(self, job_id: str, approver: str) -> ApprovalView:
        """Approve."""
        return await self._decisions().approve(job_id, approver)

    async def reject(self, job_id: str, approver: str, reason: str) -> ApprovalView:
        """Reject."""
        return await self._decisions().reject(job_id, approver, reason)

    async def close(self) -> None:
        """Close the stores and the bus."""
        await self.store.close()
        await self._triggers.close()
        if self._bus is not None:
            await self._bus.close()
