"""The remote-admin client: the management operations through a gateway's admin API.

`HttpAdmin` (triggers, jobs, audit, dead letters) is what ``--server URL`` uses; it
answers with the same views and raises the same `AdminError` as `shared.admin.StoreAdmin`,
so the CLI behaves the same either way. Sinks, routes and approvals extend it
(`triggers.notifications.HttpNotifyAdmin`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from shared.admin import AdminError, DeadList, JobList, ListFilter
from shared.api import (
    AuditList,
    DeadMessage,
    DlqPurged,
    DlqReplay,
    ErrorBody,
    RotateRequest,
    TriggerCreate,
    TriggerList,
    TriggerView,
)
from shared.audit import Outcome
from shared.jobs import JobRecord
from shared.policy import PolicyChanges

__all__ = ["HttpAdmin"]

T = TypeVar("T")
_Ids = list[str]
_Jobs = list[JobRecord]
_Dead = list[DeadMessage]

_error_decoder = msgspec.json.Decoder(ErrorBody)


class HttpAdmin:
    """The operations through a gateway's admin API (``--server URL``)."""

    def __init__(self, server: str, token: str | None, *, timeout: float = 30.0) -> None:
        self._server = server.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._session: Any = None

    async def _call(
        self,
        method: str,
        path: str,
        kind: type[T],
        *,
        body: msgspec.Struct | None = None,
        params: dict[str, Any] | None = None,
    ) -> T:
        import aiohttp  # noqa: PLC0415 - only remote use needs the client

        if self._session is None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        data = msgspec.json.encode(body) if body is not None else None
        try:
            async with self._session.request(
                method,
                f"{self._server}{path}",
                params=query,
                data=data,
                headers={"Content-Type": "application/json"} if data is not None else None,
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            msg = f"cannot reach {self._server}: {exc or type(exc).__name__}"
            raise AdminError(503, "unreachable", msg) from None
        if status >= 400:
            try:
                error = _error_decoder.decode(raw)
            except msgspec.DecodeError:
                error = ErrorBody(error="http_error", detail=f"HTTP {status} from {self._server}")
            raise AdminError(status, error.error, error.detail)
        return msgspec.json.decode(raw, type=kind)

    async def create(self, request: TriggerCreate) -> TriggerView:
        """POST /v1/triggers."""
        return await self._call("POST", "/v1/triggers", TriggerView, body=request)

    async def list(self, selection: ListFilter) -> TriggerList:
        """GET /v1/triggers."""
        status = "all" if selection.include_revoked and not selection.status else selection.status
        params = {
            "cluster": selection.cluster,
            "app": selection.app,
            "action": selection.action,
            "status": status,
            "limit": selection.limit,
            "offset": selection.offset or None,
        }
        return await self._call("GET", "/v1/triggers", TriggerList, params=params)

    async def get(self, trigger_id: str) -> TriggerView:
        """GET /v1/triggers/{id}."""
        return await self._call("GET", f"/v1/triggers/{trigger_id}", TriggerView)

    async def update(self, trigger_id: str, changes: PolicyChanges) -> TriggerView:
        """PATCH /v1/triggers/{id}."""
        return await self._call("PATCH", f"/v1/triggers/{trigger_id}", TriggerView, body=changes)

    async def rotate(self, trigger_id: str, grace: int) -> TriggerView:
        """POST /v1/triggers/{id}/rotate."""
        return await self._call(
            "POST",
            f"/v1/triggers/{trigger_id}/rotate",
            TriggerView,
            body=RotateRequest(grace=grace),
        )

    async def revoke(self, trigger_id: str) -> TriggerView:
        """DELETE /v1/triggers/{id}."""
        return await self._call("DELETE", f"/v1/triggers/{trigger_id}", TriggerView)

    async def audit(
        self,
        *,
        trigger_id: str | None = None,
        outcome: Outcome | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> AuditList:
        """GET /v1/audit."""
        params = {"trigger_id": trigger_id, "outcome": outcome, "before": before, "limit": limit}
        return await self._call("GET", "/v1/audit", AuditList, params=params)

    async def job(self, job_id: str) -> JobRecord:
        """GET /v1/jobs/{id}: a full id, or a unique prefix (the admin token allows it)."""
        return await self._call("GET", f"/v1/jobs/{job_id}", JobRecord)

    async def jobs(self, filters: dict[str, Any]) -> _Jobs:
        """GET /v1/jobs with the filters given (None: not filtered), newest first."""
        return (await self._call("GET", "/v1/jobs", JobList, params=filters)).jobs

    async def dead(self, limit: int) -> _Dead:
        """GET /v1/dlq: dead-lettered messages; they stay in the queue."""
        return (await self._call("GET", "/v1/dlq", DeadList, params={"limit": limit})).messages

    async def replay(self, ids: _Ids | None) -> dict[str, _Ids]:
        """POST /v1/dlq/replay: the given message ids, or every replayable one (None)."""
        body = DlqReplay(ids=ids, all=ids is None)
        return await self._call("POST", "/v1/dlq/replay", dict[str, _Ids], body=body)

    async def purge(self) -> int:
        """DELETE /v1/dlq: drop every dead message; how many were dropped."""
        return (await self._call("DELETE", "/v1/dlq", DlqPurged)).purged

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
