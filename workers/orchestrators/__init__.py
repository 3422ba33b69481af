"""Orchestrator adapters, one module each, chosen by `TRIGGERS_ORCHESTRATOR`."""

from __future__ import annotations

from shared.settings import Settings
from workers.orchestrators.base import Change, Orchestrator

__all__ = ["Change", "Orchestrator", "open_orchestrator"]


def _adapter(settings: Settings) -> Orchestrator:
    if settings.orchestrator == "local":
        from workers.orchestrators.local import LocalOrchestrator  # noqa: PLC0415

        return LocalOrchestrator(settings.local_state)
    msg = (
        f"TRIGGERS_ORCHESTRATOR={settings.orchestrator} is not available in this version; "
        "use TRIGGERS_ORCHESTRATOR=local"
    )
    raise ValueError(msg)


def open_orchestrator(settings: Settings) -> Orchestrator:
    """The adapter the settings name (wrapped in injected faults when testing asks)."""
    orchestrator = _adapter(settings)
    if settings.faults:
        from workers.faults import with_faults  # noqa: PLC0415 - testing only

        orchestrator = with_faults(orchestrator, settings.faults)
    return orchestrator
