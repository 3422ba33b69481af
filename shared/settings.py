"""Settings: one frozen object, read once at the entry point and passed down."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = [
    "MIN_ADMIN_TOKEN",
    "Network",
    "Settings",
    "parse_networks",
    "prune_interval",
    "with_credentials",
]

# The admin token guards every trigger: a short one could be guessed over the network.
MIN_ADMIN_TOKEN = 16

LogFormat = Literal["console", "json"]
OrchestratorName = Literal["local", "kubernetes", "swarm"]
ProxyHeader = Literal["x-forwarded-for", "forwarded"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def prune_interval(retention: float) -> float:
    """How often rows older than `retention` seconds are pruned (jobs, audit entries).

    Often enough that the table never holds much more than the retention.
    """
    return min(max(retention / 10, 1.0), 3600.0)


def parse_networks(text: str, variable: str = "TRIGGERS_TRUSTED_PROXIES") -> tuple[Network, ...]:
    """Comma-separated addresses or CIDRs (``127.0.0.1, 10.0.0.0/8``); a bad one names itself."""
    networks: list[Network] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            msg = f"{variable}: {part[:64]!r} is not an address or a CIDR (e.g. 10.0.0.0/8)"
            raise ValueError(msg) from None
    return tuple(networks)


def with_credentials(urls: str, username: str, password: str) -> str:
    """Each of the comma-separated broker URLs with this user and password, percent-encoded.

    A password from a Secret may hold ``@``, ``/``, ``:`` or ``%``; pasted into a URL as it
    is, it would change the host the URL names. Encoded, the broker gets it unchanged.
    """
    out = []
    for url in urls.split(","):
        parts = urlsplit(url.strip())
        user = quote(username or (parts.username or ""), safe="")
        secret = quote(password, safe="") if password else quote(parts.password or "", safe="")
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{user}:{secret}@{host}" if user or secret else host
        out.append(urlunsplit(parts._replace(netloc=netloc)))
    return ",".join(out)


def _amqp_credentials(env: Mapping[str, str], values: dict[str, Any]) -> None:
    """TRIGGERS_AMQP_USERNAME / _PASSWORD (e.g. from a Secret) go into the broker URLs."""
    if env.get("TRIGGERS_AMQP_USERNAME") or env.get("TRIGGERS_AMQP_PASSWORD"):
        values["amqp_url"] = with_credentials(
            values.get("amqp_url", Settings.amqp_url),
            env.get("TRIGGERS_AMQP_USERNAME", ""),
            env.get("TRIGGERS_AMQP_PASSWORD", ""),
        )


def _default_log_format() -> LogFormat:
    return "console" if sys.stderr.isatty() else "json"


def _delays(env: Mapping[str, str], var: str, name: str) -> dict[str, tuple[float, ...]]:
    """A comma-separated list of seconds from `var`, as ``{name: delays}`` when it is set."""
    if not env.get(var):
        return {}
    try:
        return {name: tuple(float(d) for d in env[var].split(",") if d.strip())}
    except ValueError:
        msg = f"{var} must be comma-separated seconds, e.g. 1,5,30,120"
        raise ValueError(msg) from None


def _check_admin_token(token: str | None) -> None:
    if token is not None and len(token) < MIN_ADMIN_TOKEN:
        msg = (
            f"TRIGGERS_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters; "
            "make one with `openssl rand -hex 32`"
        )
        raise ValueError(msg)


def _durations(env: Mapping[str, str]) -> dict[str, float]:
    """The retention settings, written ``90s``, ``12h``, ``7d``... (seconds)."""
    values: dict[str, float] = {}
    for var, name in (
        ("TRIGGERS_JOB_RETENTION", "job_retention"),
        ("TRIGGERS_AUDIT_RETENTION", "audit_retention"),
    ):
        if env.get(var):
            from shared.jobs import parse_duration  # noqa: PLC0415 - settings stay import-light

            try:
                values[name] = parse_duration(env[var]).total_seconds()
            except ValueError as exc:
                msg = f"{var}: {exc}"
                raise ValueError(msg) from None
    return values


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a process needs to know, from the environment (`TRIGGERS_*`) or flags.

    The defaults live here only: a constructor that has one of these as a keyword default
    names it (``timeout: float = Settings.orchestrator_timeout``), never the number. No
    slots, so each field's default stays readable as a class attribute.
    """

    # One AMQP URL, or a cluster's nodes separated by commas (same user, password, vhost).
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Quorum queues: nodes holding a replica (0: the broker's default), and where their
    # leaders go ("balanced" spreads them; "client-local"; "": the broker's default).
    quorum_group_size: int = 3
    queue_leader_locator: str = "balanced"
    database: str = "sqlite:///triggers.db"
    orchestrator: OrchestratorName = "local"
    local_state: str = "local-cluster.db"
    # Kubernetes: kubeconfig file(s), as KUBECONFIG; None means ~/.kube/config.
    kubeconfig: str | None = None
    # Swarm: Docker endpoint, or "cluster=url,..." per trigger cluster; None: local socket.
    docker_host: str | None = None
    # Swarm: a Docker client config file (config.json) whose registry credentials go with
    # every service update (X-Registry-Auth); None: updates carry no credentials.
    docker_config: str | None = None
    # Seconds one orchestrator API call may take before it counts as a retryable failure.
    orchestrator_timeout: float = 10.0
    # Seconds a redeploy's rollout may take before its result is `failed` (Swarm, Kubernetes).
    rollout_timeout: float = 300.0
    public_url: str = "http://127.0.0.1:8080"
    # The gateway serves HTTPS itself with both (PEM files); usually TLS ends in front.
    tls_cert: str | None = None
    tls_key: str | None = None
    # repr=False: the token must never reach a log line through a repr of the settings.
    admin_token: str | None = field(default=None, repr=False)
    log_format: LogFormat = field(default_factory=_default_log_format)
    log_level: str = "info"
    # Gateway tuning.
    publish_timeout: float = 5.0
    max_body_bytes: int = 64 * 1024
    trigger_cache_ttl: float = 2.0
    # Peers whose Forwarded / X-Forwarded-For are believed (gateway/client.py); none: the
    # headers are ignored and the TCP peer is the client.
    trusted_proxies: tuple[Network, ...] = ()
    # The header those proxies write (a client can send the other one through them).
    proxy_header: ProxyHeader = "x-forwarded-for"
    # /metrics on a listener of its own (then not on the gateway's port); None: on the port.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # Seconds a scrape reuses the last reading of queue depths and job counts.
    metrics_cache_ttl: float = 5.0
    # Failed authentications per client address and trigger (and per address on the admin
    # API) in a minute, past which wrong secrets get 429 (0: no limit). A correct secret is
    # never refused.
    auth_failures_per_minute: int = 30
    # Connection hardening (gateway/connections.py): seconds to deliver a request's headers,
    # to deliver a trigger call's body, to keep an idle keep-alive connection; connections
    # one client address may hold (one over closes its oldest idle one; 0: no cap).
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    idle_timeout: float = 75.0
    max_connections_per_address: int = 64
    # How long an Idempotency-Key answers the same job (seconds).
    idempotency_window: float = 86400.0
    # Registry pushes and alerts (gateway/sources): one digest deploys once per window,
    # one alert (group) acts once per cooldown, signed timestamps are valid this long.
    push_dedupe_window: float = 120.0
    alert_cooldown: float = 300.0
    signature_tolerance: float = 300.0
    # Where the public keys of Google-signed OIDC tokens (Pub/Sub push) are read.
    oidc_jwks_url: str = "https://www.googleapis.com/oauth2/v3/certs"
    # Longest `wait=N` a trigger call may ask for, in seconds.
    max_wait: float = 60.0
    # Job history: how long the recorder keeps jobs, in seconds.
    job_retention: float = 7 * 86400.0
    # Shared rate-limit and cooldown state; None keeps it in the gateway process.
    redis_url: str | None = field(default=None, repr=False)
    redis_prefix: str = "container-triggers:"
    # Audit entries wait in a bounded queue and are written in batches off the hot path.
    audit_flush_interval: float = 0.5
    audit_max_pending: int = 10_000
    # Seconds a web console sign-in lasts (its session cookie's expiry).
    console_session_ttl: float = 12 * 3600.0
    # How long the gateways keep audit entries, in seconds (pruned like jobs).
    audit_retention: float = 30 * 86400.0
    # Worker tuning.
    # Enough in hand for the local cluster to commit many commands in one transaction.
    prefetch: int = 64
    max_attempts: int = 5
    # Delay before each retry of a retryable failure; the last one repeats. Each delay is
    # a queue (triggers.retry.<action>.<ms>ms), so changing them declares new queues.
    retry_delays: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    shutdown_timeout: float = 20.0
    # Seconds a command may take before the worker publishes its `running` notice: fast
    # jobs go from accepted straight to their result, without a notice (0: always, first).
    running_notice_after: float = 0.5
    consumer_check_interval: float = 5.0
    # Notifier: delay before each retry of a delivery (the last one repeats; each delay is
    # a queue, triggers.notify.retry.<ms>ms), tries before a delivery is dead-lettered,
    # a CA file for SMTP servers with a private certificate, and how often held calls
    # are checked for their timeout.
    notify_retry_delays: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0)
    notify_max_attempts: int = 8
    smtp_cafile: str | None = None
    approval_sweep_interval: float = 5.0
    # Testing only: names of faults the worker injects into itself (see workers/_faults.py).
    faults: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `TRIGGERS_*` variables; keyword overrides (command-line flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        simple = {
            "TRIGGERS_AMQP_URL": "amqp_url",
            "TRIGGERS_DATABASE": "database",
            "TRIGGERS_ORCHESTRATOR": "orchestrator",
            "TRIGGERS_LOCAL_STATE": "local_state",
            "KUBECONFIG": "kubeconfig",
            "TRIGGERS_DOCKER_HOST": "docker_host",
            "TRIGGERS_DOCKER_CONFIG": "docker_config",
            "TRIGGERS_PUBLIC_URL": "public_url",
            "TRIGGERS_TLS_CERT": "tls_cert",
            "TRIGGERS_TLS_KEY": "tls_key",
            "TRIGGERS_ADMIN_TOKEN": "admin_token",
            "TRIGGERS_LOG_FORMAT": "log_format",
            "TRIGGERS_LOG_LEVEL": "log_level",
            "TRIGGERS_REDIS_URL": "redis_url",
            "TRIGGERS_REDIS_PREFIX": "redis_prefix",
            "TRIGGERS_METRICS_ADDR": "metrics_host",
            "TRIGGERS_SMTP_CAFILE": "smtp_cafile",
            "TRIGGERS_QUEUE_LEADER_LOCATOR": "queue_leader_locator",
        }
        for var, name in simple.items():
            if env.get(var):
                values[name] = env[var]
        numbers = {
            "TRIGGERS_PUBLISH_TIMEOUT": ("publish_timeout", float),
            "TRIGGERS_MAX_BODY_BYTES": ("max_body_bytes", int),
            "TRIGGERS_TRIGGER_CACHE_TTL": ("trigger_cache_ttl", float),
            "TRIGGERS_AUTH_FAILURES_PER_MINUTE": ("auth_failures_per_minute", int),
            "TRIGGERS_HEADER_TIMEOUT": ("header_timeout", float),
            "TRIGGERS_BODY_TIMEOUT": ("body_timeout", float),
            "TRIGGERS_IDLE_TIMEOUT": ("idle_timeout", float),
            "TRIGGERS_MAX_CONNECTIONS_PER_ADDRESS": ("max_connections_per_address", int),
            "TRIGGERS_IDEMPOTENCY_WINDOW": ("idempotency_window", float),
            "TRIGGERS_PUSH_DEDUPE_WINDOW": ("push_dedupe_window", float),
            "TRIGGERS_ALERT_COOLDOWN": ("alert_cooldown", float),
            "TRIGGERS_SIGNATURE_TOLERANCE": ("signature_tolerance", float),
            "TRIGGERS_OIDC_JWKS_URL": ("oidc_jwks_url", str),
            "TRIGGERS_MAX_WAIT": ("max_wait", float),
            "TRIGGERS_PREFETCH": ("prefetch", int),
            "TRIGGERS_MAX_ATTEMPTS": ("max_attempts", int),
            "TRIGGERS_SHUTDOWN_TIMEOUT": ("shutdown_timeout", float),
            "TRIGGERS_RUNNING_NOTICE_AFTER": ("running_notice_after", float),
            "TRIGGERS_CONSUMER_CHECK_INTERVAL": ("consumer_check_interval", float),
            "TRIGGERS_ORCHESTRATOR_TIMEOUT": ("orchestrator_timeout", float),
            "TRIGGERS_ROLLOUT_TIMEOUT": ("rollout_timeout", float),
            "TRIGGERS_AUDIT_FLUSH_INTERVAL": ("audit_flush_interval", float),
            "TRIGGERS_AUDIT_MAX_PENDING": ("audit_max_pending", int),
            "TRIGGERS_METRICS_PORT": ("metrics_port", int),
            "TRIGGERS_METRICS_CACHE_TTL": ("metrics_cache_ttl", float),
            "TRIGGERS_CONSOLE_SESSION_TTL": ("console_session_ttl", float),
            "TRIGGERS_NOTIFY_MAX_ATTEMPTS": ("notify_max_attempts", int),
            "TRIGGERS_APPROVAL_SWEEP_INTERVAL": ("approval_sweep_interval", float),
            "TRIGGERS_QUORUM_GROUP_SIZE": ("quorum_group_size", int),
        }
        for var, (name, kind) in numbers.items():
            if env.get(var):
                try:
                    values[name] = kind(env[var])
                except ValueError:
                    msg = f"{var} must be a number, got {env[var]!r}"
                    raise ValueError(msg) from None
        values.update(_delays(env, "TRIGGERS_RETRY_DELAYS", "retry_delays"))
        values.update(_delays(env, "TRIGGERS_NOTIFY_RETRY_DELAYS", "notify_retry_delays"))
        values.update(_durations(env))
        if env.get("TRIGGERS_TRUSTED_PROXIES"):
            values["trusted_proxies"] = parse_networks(env["TRIGGERS_TRUSTED_PROXIES"])
        if env.get("TRIGGERS_PROXY_HEADER"):
            values["proxy_header"] = env["TRIGGERS_PROXY_HEADER"].strip().lower()
        if env.get("TRIGGERS_FAULTS"):
            values["faults"] = frozenset(f.strip() for f in env["TRIGGERS_FAULTS"].split(","))
        values.update({k: v for k, v in overrides.items() if v is not None})
        _amqp_credentials(env, values)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Fail at start-up, with the variable to fix, rather than at the first call."""
        if self.orchestrator not in ("local", "kubernetes", "swarm"):
            msg = (
                f"TRIGGERS_ORCHESTRATOR must be local, kubernetes or swarm, "
                f"got {self.orchestrator!r}"
            )
            raise ValueError(msg)
        if self.log_format not in ("console", "json"):
            msg = f"TRIGGERS_LOG_FORMAT must be console or json, got {self.log_format!r}"
            raise ValueError(msg)
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            msg = f"TRIGGERS_METRICS_PORT must be a port from 1 to 65535, got {self.metrics_port}"
            raise ValueError(msg)
        if self.proxy_header not in ("x-forwarded-for", "forwarded"):
            msg = (
                "TRIGGERS_PROXY_HEADER must be x-forwarded-for or forwarded, "
                f"got {self.proxy_header[:32]!r}"
            )
            raise ValueError(msg)
        if not self.retry_delays or any(d <= 0 for d in self.retry_delays):
            msg = "TRIGGERS_RETRY_DELAYS needs at least one delay, each above 0 seconds"
            raise ValueError(msg)
        if not self.notify_retry_delays or any(d <= 0 for d in self.notify_retry_delays):
            msg = "TRIGGERS_NOTIFY_RETRY_DELAYS needs at least one delay, each above 0 seconds"
            raise ValueError(msg)
        if self.notify_max_attempts < 1:
            msg = f"TRIGGERS_NOTIFY_MAX_ATTEMPTS must be 1 or more, got {self.notify_max_attempts}"
            raise ValueError(msg)
        if self.running_notice_after < 0:
            msg = (
                "TRIGGERS_RUNNING_NOTICE_AFTER must be 0 or more seconds, "
                f"got {self.running_notice_after:g}"
            )
            raise ValueError(msg)
        if self.console_session_ttl <= 0:
            msg = "TRIGGERS_CONSOLE_SESSION_TTL must be above 0 seconds"
            raise ValueError(msg)
        if self.quorum_group_size < 0:
            msg = f"TRIGGERS_QUORUM_GROUP_SIZE must be 0 or more, got {self.quorum_group_size}"
            raise ValueError(msg)
        if self.queue_leader_locator not in ("balanced", "client-local", ""):
            msg = (
                "TRIGGERS_QUEUE_LEADER_LOCATOR must be balanced or client-local, "
                f"got {self.queue_leader_locator!r}"
            )
            raise ValueError(msg)
        from shared.amqp_transport import BrokerNodes  # noqa: PLC0415 - settings stay import-light

        BrokerNodes(self.amqp_url, shuffle=False)  # raises ValueError naming the variable
        _check_admin_token(self.admin_token)
        if not self.database.startswith(("sqlite:///", "postgresql://", "postgres://")):
            msg = (
                "TRIGGERS_DATABASE must look like sqlite:///path/to/file.db "
                f"or postgresql://..., got {self.database.split('://')[0]}://..."
            )
            raise ValueError(msg)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return replace(self, **changes)
