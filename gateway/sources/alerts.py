"""Alert notifications: Prometheus Alertmanager (webhook version 4) and Grafana alerting.

Alertmanager: https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
Grafana: https://grafana.com/docs/grafana/latest/alerting/configure-notifications/manage-contact-points/integrations/webhook-notifier/
Both send one notification per alert group, again every ``repeat_interval`` while it
fires; the group key (else the alerts' fingerprints) says which re-sends are the same.
Alertmanager sends ``Authorization: Bearer <credentials>`` from its receiver's
``http_config.authorization``; Grafana's webhook contact point has an "Authorization
Header" setting: both keep the trigger secret out of the URL.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from gateway.sources._event import (
    Alert,
    Headers,
    Parsed,
    SourceFormat,
    UnusableBody,
    convert,
)

__all__ = ["ALERTMANAGER", "GRAFANA"]


class _Alert(msgspec.Struct, frozen=True):
    status: str = "firing"
    labels: dict[str, str] = {}
    fingerprint: str | None = None


class _Notification(msgspec.Struct, frozen=True, rename="camel"):
    status: Literal["firing", "resolved"]
    alerts: list[_Alert]
    version: str | None = None
    group_key: str | None = None
    group_labels: dict[str, str] = {}
    common_labels: dict[str, str] = {}
    title: str | None = None


def _is_notification(payload: Any) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("alerts"), list)


def _is_grafana(payload: Any) -> bool:
    return _is_notification(payload) and ("orgId" in payload or "state" in payload)


def _detect_alertmanager(payload: Any, headers: Headers, content_type: str) -> bool:
    return _is_notification(payload) and "groupKey" in payload and not _is_grafana(payload)


def _detect_grafana(payload: Any, headers: Headers, content_type: str) -> bool:
    return _is_grafana(payload)


def _alert(body: _Notification) -> Alert:
    fingerprints = tuple(sorted({a.fingerprint for a in body.alerts if a.fingerprint}))
    key = body.group_key or ",".join(fingerprints)
    if not key:
        msg = (
            "the notification has neither a groupKey nor alert fingerprints to tell re-sends apart"
        )
        raise UnusableBody(msg)
    first = body.alerts[0].labels if body.alerts else {}
    name = (
        body.common_labels.get("alertname")
        or body.group_labels.get("alertname")
        or first.get("alertname")
        or body.title
    )
    return Alert(
        status=body.status, key=key, name=name, fingerprints=fingerprints, count=len(body.alerts)
    )


def _parse_alertmanager(payload: Any, headers: Headers) -> Parsed:
    body = convert(payload, _Notification, "Alertmanager")
    if body.version != "4":
        msg = f"Alertmanager webhook version {body.version!r} is not supported; version 4 is"
        raise UnusableBody(msg)
    return Parsed(source="alertmanager", alert=_alert(body))


def _parse_grafana(payload: Any, headers: Headers) -> Parsed:
    return Parsed(source="grafana", alert=_alert(convert(payload, _Notification, "Grafana")))


ALERTMANAGER = SourceFormat(
    name="alertmanager",
    label="Prometheus Alertmanager",
    detect=_detect_alertmanager,
    parse=_parse_alertmanager,
)
GRAFANA = SourceFormat(
    name="grafana", label="Grafana alerting", detect=_detect_grafana, parse=_parse_grafana
)
