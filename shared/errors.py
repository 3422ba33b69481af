"""One root error type with a retryable and a permanent branch.

The worker turns these into retry, failed result or dead-letter; the gateway maps them to HTTP.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "ConflictError",
    "NotFoundError",
    "PermanentError",
    "RequestError",
    "RetryableError",
    "StoreUnavailable",
    "TriggersError",
]


class TriggersError(Exception):
    """Root of every error this project raises on purpose."""


class RequestError(TriggersError):
    """A refused request: an HTTP status, a stable code, and a detail that says how to fix it.

    The gateway's one error middleware answers it as ``{"error": code, "detail": detail}``
    (`gateway.errors`); the CLI prints the detail.
    """

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


class RetryableError(TriggersError):
    """The same call may succeed later: a timeout, a conflict, an unreachable API."""


class PermanentError(TriggersError):
    """Retrying cannot help: the target does not exist, access is forbidden, the input is invalid."""


class ConfigError(PermanentError):
    """A setting, or a file it names, is unusable: found at start-up, with what to fix."""


class NotFoundError(PermanentError):
    """The cluster, application or service named by a command does not exist."""


class ConflictError(RetryableError):
    """A concurrent writer changed the object first; read again and retry."""


class BrokerUnavailable(RetryableError):
    """The broker did not confirm a message: unreachable, refused, or too slow."""


class StoreUnavailable(RetryableError):
    """The database did not answer: unreachable, refused, out of file descriptors, locked."""
