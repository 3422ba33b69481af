"""Trigger management, the same operations on the local store or a remote gateway.

`StoreAdmin` works on a `TriggerStore` (the CLI on this machine, and the gateway's admin
API itself); `triggers.remote.HttpAdmin` calls a gateway's admin API. Both answer with the `shared/api.py`
views and raise `AdminError` with the HTTP status, code and detail the API would give,
so the CLI behaves the same either way.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import msgspec

from shared.api import (
    AuditList,
    DeadMessage,
    TriggerCreate,
    TriggerList,
    TriggerView,
    created_view,
    trigger_view,
)
from shared.audit import Outcome
from shared.errors import RequestError
from shared.jobs import JobRecord
from shared.messages import Action, utcnow
from shared.policy import PolicyChanges, PolicyError, merge_options
from shared.store import TriggerRevokedError, TriggerStore
from shared.triggers import Trigger, TriggerOptions, TriggerState, new_secret, trigger_call_url

__all__ = ["AdminError", "ListFilter", "StoreAdmin", "TriggerAdmin"]

T = TypeVar("T")


class AdminError(RequestError):
    """A refused operation: the HTTP status, a stable code and a detail saying how to fix it."""


# Aliases: inside HttpAdmin, `list` is its own method, not the builtin.
_Ids = list[str]
_Jobs = list[JobRecord]
_Dead = list[DeadMessage]


class DeadList(msgspec.Struct, kw_only=True):
    """``GET /v1/dlq``."""

    messages: list[DeadMessage]


class JobList(msgspec.Struct, kw_only=True):
    """``GET /v1/jobs``."""

    jobs: list[JobRecord]


class ListFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What `list` selects; `status` "all" includes revoked triggers."""

    cluster: str | None = None
    app: str | None = None
    action: Action | None = None
    status: TriggerState | None = None
    include_revoked: bool = False
    limit: int = 100
    offset: int = 0


class TriggerAdmin(Protocol):
    """The management operations, wherever the triggers live."""

    async def create(self, request: TriggerCreate) -> TriggerView:
        """Create; the view carries `url` and `secret`, shown this once."""
        ...

    async def list(self, selection: ListFilter) -> TriggerList:
        """A page of triggers, newest first."""
        ...

    async def get(self, trigger_id: str) -> TriggerView:
        """One trigger."""
        ...

    async def update(self, trigger_id: str, changes: PolicyChanges) -> TriggerView:
        """Change the policy."""
        ...

    async def rotate(self, trigger_id: str, grace: int) -> TriggerView:
        """New secret; the view carries the new `url` and `secret`."""
        ...

    async def revoke(self, trigger_id: str) -> TriggerView:
        """Revoke (idempotent)."""
        ...

    async def audit(
        self,
        *,
        trigger_id: str | None = None,
        outcome: Outcome | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> AuditList:
        """A page of the audit trail, newest first."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _not_found(trigger_id: str) -> AdminError:
    return AdminError(
        404, "trigger_not_found", f"no trigger {trigger_id[:64]!r}; `triggers list` shows them"
    )


def _revoked(exc: TriggerRevokedError) -> AdminError:
    return AdminError(409, "trigger_revoked", str(exc))


class StoreAdmin:
    """The operations on a trigger store."""

    def __init__(self, store: TriggerStore, public_url: str) -> None:
        self.store = store
        self._public_url = public_url

    def _view(self, trigger: Trigger, secret: str | None = None) -> TriggerView:
        url = trigger_call_url(self._public_url, trigger, secret) if secret else None
        return trigger_view(trigger, utcnow(), url=url, secret=secret)

    def _created(self, trigger: Trigger, secret: str) -> TriggerView:
        url = trigger_call_url(self._public_url, trigger, secret)
        return created_view(trigger, utcnow(), url=url, secret=secret)

    async def create(self, request: TriggerCreate) -> TriggerView:
        """Create a trigger with its policy."""
        options = request.options or TriggerOptions()
        image_update = request.image_update or options.image is not None
        if image_update and request.action != "redeploy":
            raise AdminError(422, "invalid_body", "image_update applies to redeploy triggers only")
        try:
            # step, alert_cooldown and scale_in_on_resolve may come beside the policy too.
            options = merge_options(request.action, image_update, request, options)
        except PolicyError as exc:
            raise AdminError(422, "invalid_body", str(exc)) from None
        if options.signature and options.signature != "google-oidc" and not options.signing_secret:
            # Generated here, shown once in the answer, like the secret.
            options = msgspec.structs.replace(options, signing_secret=new_secret())
        try:
            trigger, secret = await self.store.create(
                cluster=request.cluster,
                app=request.app,
                action=request.action,
                service=request.service,
                image_update=image_update,
                namespace=request.namespace,
                options=options,
                policy=request,
            )
        except ValueError as exc:  # names, a missing service, a policy that cannot hold
            raise AdminError(422, "invalid_body", str(exc)) from None
        return self._created(trigger, secret)

    async def list(self, selection: ListFilter) -> TriggerList:
        """A page, with one extra row read to know whether another page follows."""
        triggers = await self.store.list(
            cluster=selection.cluster,
            app=selection.app,
            action=selection.action,
            state=selection.status,
            include_revoked=selection.include_revoked,
            limit=selection.limit + 1,
            offset=selection.offset,
        )
        more = len(triggers) > selection.limit
        return TriggerList(
            triggers=[self._view(t) for t in triggers[: selection.limit]],
            next_offset=selection.offset + selection.limit if more else None,
        )

    async def get(self, trigger_id: str) -> TriggerView:
        """One trigger or 404."""
        trigger = await self.store.get(trigger_id)
        if trigger is None:
            raise _not_found(trigger_id)
        return self._view(trigger)

    async def update(self, trigger_id: str, changes: PolicyChanges) -> TriggerView:
        """Change the policy as a whole."""
        try:
            trigger = await self.store.update(trigger_id, changes)
        except PolicyError as exc:
            raise AdminError(422, "invalid_body", str(exc)) from None
        except TriggerRevokedError as exc:
            raise _revoked(exc) from None
        if trigger is None:
            raise _not_found(trigger_id)
        return self._view(trigger)

    async def rotate(self, trigger_id: str, grace: int) -> TriggerView:
        """New secret; the old one works `grace` more seconds."""
        try:
            rotated = await self.store.rotate(trigger_id, grace=grace)
        except TriggerRevokedError as exc:
            raise _revoked(exc) from None
        if rotated is None:
            raise _not_found(trigger_id)
        return self._view(*rotated)

    async def revoke(self, trigger_id: str) -> TriggerView:
        """Revoke."""
        trigger = await self.store.revoke(trigger_id)
        if trigger is None:
            raise _not_found(trigger_id)
        return self._view(trigger)

    async def audit(
        self,
        *,
        trigger_id: str | None = None,
        outcome: Outcome | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> AuditList:
        """A page of the audit trail."""
        entries = await self.store.list_audit(
            trigger_id=trigger_id, outcome=outcome, before_id=before, limit=limit + 1
        )
        page = entries[:limit]
        more = len(entries) > limit and bool(page)
        return AuditList(entries=page, next_before=page[-1].id if more else None)

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()
