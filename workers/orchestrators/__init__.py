"""Orchestrator adapters, one module each, chosen by `TRIGGERS_ORCHESTRATOR`."""

from __future__ import annotations

from shared.settings import Settings
from workers.orchestrators.base import Change, Orchestrator

__all__ = ["Change", "Orchestrator", "open_orchestrator"]


def _adapter(settings: Settings) -> Orchestrator:
    """The adapter `TRIGGERS_ORCHESTRATOR` names, configured from the settings."""
    if settings.orchestrator == "kubernetes":
        from workers.orchestrators.kubernetes import KubernetesOrchestrator  # noqa: PLC0415 - load only the chosen client library

        return KubernetesOrchestrator(
            kubeconfig=settings.kubeconfig,
            timeout=settings.orchestrator_timeout,
            rollout_timeout=settings.rollout_timeout,
        )
    if settings.orchestrator == "swarm":
        from workers.orchestrators.swarm import SwarmOrchestrator  # noqa: PLC0415 - load only the chosen client library

        return SwarmOrchestrator(
            docker_host=settings.docker_host,
            docker_config=settings.docker_config,
            timeout=settings.orchestrator_timeout,
            rollout_timeout=settings.rollout_timeout,
        )
    from workers.orchestrators.local import LocalOrchestrator  # noqa: PLC0415 - load only the chosen adapter

    return LocalOrchestrator(settings.local_state)


def open_orchestrator(settings: Settings) -> Orchestrator:
    """The adapter the settings name (wrapped in injected faults when testing asks)."""
    orchestrator = _adapter(settings)
    if settings.faults:
        from workers.faults import with_faults  # noqa: PLC0415 - testing only

        orchestrator = with_faults(orchestrator, settings.faults)
    return orchestrator
