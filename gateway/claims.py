"""What one trigger call holds while it runs, and what becomes of it on every path.

A call's `Reservation` claims keys in `gateway.recent` before it publishes: a signed request's signature
(against replays), a pushed digest, an alert group, a delivery id, the caller's
``Idempotency-Key``. The policy may claim the trigger's cooldown. Three endings:

- **published** (the broker confirmed): each key is confirmed with the job id; a retry
  gets the same job (an idempotency key) or is ignored (an event already acted on);
- **not published** (refused, held back, or a `wait=N` call that could not wait): every
  claim is released, so a retry acts. Only a signature stays claimed when the call was
  refused with a 4xx, since the same bytes would be refused again;
- **maybe published** (publishing failed: a lost confirm looks like a refused publish, and
  a persisted command may still run). Each key is marked ``unconfirmed:<job id>``: a retry carrying any
  of them publishes the *same* job id again, which workers apply at most once
  (`workers.orchestrators.ledger`), so the retry can neither be lost nor run twice. The
  cooldown is released: without a key, nothing tells a retry from a new call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

from gateway.recent import PENDING, RecentEvents
from shared.errors import RequestError

__all__ = ["UNCONFIRMED", "Earlier", "Reservation", "earlier_job"]

# The value of a key whose command was sent but not confirmed: this prefix and its job id.
UNCONFIRMED = "unconfirmed:"


@dataclass(frozen=True)
class Earlier:
    """What a key held before this call: a call in progress, a confirmed job, or an unconfirmed one."""

    job_id: str | None
    pending: bool = False
    unconfirmed: bool = False


def earlier_job(value: str | None) -> Earlier | None:
    """Decode a key's value from `RecentEvents.claim` or `seen`."""
    if value is None:
        return None
    if value == PENDING:
        return Earlier(None, pending=True)
    if value.startswith(UNCONFIRMED):
        return Earlier(value.removeprefix(UNCONFIRMED), unconfirmed=True)
    return Earlier(value)


@dataclass
class Reservation:
    """The keys and the cooldown one call holds, settled once at its end.

    Used as ``async with Reservation(recent) as reservation:``: whatever the call did not
    confirm (`confirm`) or mark unconfirmed (`publish` failing) is released on the way out.
    """

    recent: RecentEvents
    # key -> time to live; `sticky` keys stay claimed when the call is refused with a 4xx.
    keys: dict[str, float] = field(default_factory=dict)
    sticky: set[str] = field(default_factory=set)
    # Keys the command supersedes, forgotten once it is confirmed (a resolve re-arms firing).
    supersedes: tuple[str, ...] = ()
    # The job id of an unconfirmed earlier attempt this call retries, if any.
    retry_of: str | None = None
    release_cooldown: Callable[[], Awaitable[None]] | None = None
    settled: bool = False

    async def __aenter__(self) -> Reservation:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Refused with a 4xx (raised, or returned as an outcome): a signature stays claimed.
        refused = exc is None or (isinstance(exc, RequestError) and exc.status < 500)
        await self.release(refused=refused)

    async def claim(self, key: str, ttl: float, *, sticky: bool = False) -> Earlier | None:
        """Claim `key`; what it held before (this call then holds nothing for it), or None.

        A key of an unconfirmed job is taken over: this call becomes its retry.
        """
        earlier = earlier_job(await self.recent.claim(key, ttl))
        if earlier is not None and earlier.unconfirmed:
            self.retry_of = self.retry_of or earlier.job_id
            self.keys[key] = ttl
        elif earlier is None:
            self.keys[key] = ttl
            if sticky:
                self.sticky.add(key)
        return earlier

    async def drop(self, key: str) -> None:
        """Release one key now (the rest of the call goes on without it)."""
        if self.keys.pop(key, None) is not None:
            await self.recent.release(key)

    def job_id(self, new: Callable[[], str]) -> str:
        """The job id to publish: the retried one's, else a new one."""
        return self.retry_of or new()

    async def publish(self, job_id: str, send: Callable[[], Awaitable[None]]) -> None:
        """Send the command; confirm every claim once the broker confirmed it.

        When sending fails the command may be persisted all the same (a lost confirm looks
        like any other failure): the claims are kept as unconfirmed, so that a retry with
        the same keys publishes the same job id, which runs at most once.
        """
        try:
            await send()
        except BaseException:
            await self._unconfirmed(job_id)
            raise
        await self.confirm(job_id)

    async def confirm(self, job_id: str) -> None:
        """Confirmed: every key now names the job; what it supersedes is forgotten."""
        self.settled = True
        for key, ttl in self.keys.items():
            await self.recent.confirm(key, job_id, ttl)
        for key in self.supersedes:
            await self.recent.forget(key)

    async def _unconfirmed(self, job_id: str) -> None:
        """Sent, not confirmed: a retry must publish the same job id."""
        self.settled = True
        for key, ttl in self.keys.items():
            await self.recent.confirm(key, f"{UNCONFIRMED}{job_id}", ttl)
        if self.release_cooldown is not None:
            await self.release_cooldown()

    async def release(self, *, refused: bool) -> None:
        """Nothing was sent: let a retry act (a retry of an unconfirmed job stays one)."""
        if self.settled:
            return
        self.settled = True
        if self.release_cooldown is not None:
            await self.release_cooldown()
        if self.retry_of is not None:
            await self._unconfirmed(self.retry_of)
            return
        for key in self.keys:
            if not (refused and key in self.sticky):
                await self.recent.release(key)
