"""Settings from the environment: the documented defaults, parsing, and one clear error
naming the variable to fix."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

import pytest

from shared.settings import Settings, parse_networks, prune_interval, with_credentials

pytestmark = pytest.mark.unit

TOKEN = "a" * 32


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    """The defaults of the design's table: local broker, SQLite file, local cluster."""
    settings = Settings.from_env({})
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.database == "sqlite:///triggers.db"
    assert settings.orchestrator == "local"
    assert settings.local_state == "local-cluster.db"
    assert settings.public_url == "http://127.0.0.1:8080"
    assert settings.admin_token is None
    assert settings.trusted_proxies == ()


def test_variables_are_read_and_flags_win() -> None:
    """TRIGGERS_* set the fields; a keyword override (a command-line flag) wins; None does not."""
    env = {
        "TRIGGERS_DATABASE": "postgresql://db.internal/triggers",
        "TRIGGERS_ORCHESTRATOR": "swarm",
        "TRIGGERS_PUBLIC_URL": "https://triggers.example.com",
        "TRIGGERS_PREFETCH": "8",
        "TRIGGERS_PUBLISH_TIMEOUT": "2.5",
    }
    settings = Settings.from_env(env, orchestrator="kubernetes", public_url=None)
    assert settings.database == "postgresql://db.internal/triggers"
    assert settings.orchestrator == "kubernetes"
    assert settings.public_url == "https://triggers.example.com"
    assert (settings.prefetch, settings.publish_timeout) == (8, 2.5)


def test_an_empty_variable_counts_as_unset() -> None:
    """`TRIGGERS_DATABASE=` keeps the default rather than an empty URL."""
    assert Settings.from_env({"TRIGGERS_DATABASE": ""}).database == "sqlite:///triggers.db"


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("TRIGGERS_PREFETCH", "many", "TRIGGERS_PREFETCH must be a number, got 'many'"),
        (
            "TRIGGERS_ORCHESTRATOR",
            "nomad",
            "TRIGGERS_ORCHESTRATOR must be local, kubernetes or swarm",
        ),
        ("TRIGGERS_LOG_FORMAT", "xml", "TRIGGERS_LOG_FORMAT must be console or json"),
        ("TRIGGERS_METRICS_PORT", "70000", "TRIGGERS_METRICS_PORT must be a port from 1 to 65535"),
        (
            "TRIGGERS_RETRY_DELAYS",
            "1,soon",
            "TRIGGERS_RETRY_DELAYS must be comma-separated seconds",
        ),
        ("TRIGGERS_RETRY_DELAYS", "1,0", "TRIGGERS_RETRY_DELAYS needs at least one delay"),
        ("TRIGGERS_ADMIN_TOKEN", "short", "TRIGGERS_ADMIN_TOKEN must be at least 16 characters"),
        ("TRIGGERS_DATABASE", "mysql://db/x", "TRIGGERS_DATABASE must look like sqlite:///"),
        ("TRIGGERS_TRUSTED_PROXIES", "10.0.0.0/8,nope", "TRIGGERS_TRUSTED_PROXIES: 'nope'"),
        (
            "TRIGGERS_PROXY_HEADER",
            "via",
            "TRIGGERS_PROXY_HEADER must be x-forwarded-for or forwarded",
        ),
        ("TRIGGERS_QUEUE_LEADER_LOCATOR", "random", "TRIGGERS_QUEUE_LEADER_LOCATOR must be"),
        ("TRIGGERS_RUNNING_NOTICE_AFTER", "-1", "TRIGGERS_RUNNING_NOTICE_AFTER must be 0 or more"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str, complaint: str) -> None:
    """Each bad value fails at start-up with the variable to fix."""
    with pytest.raises(ValueError, match="^" + re.escape(complaint)):
        Settings.from_env({variable: value})


def test_a_bad_database_url_is_not_echoed() -> None:
    """The error shows the URL's scheme only: the rest may hold a password."""
    with pytest.raises(ValueError, match="got mysql://") as failed:
        Settings.from_env({"TRIGGERS_DATABASE": "mysql://root:hunter2@db/x"})
    assert "hunter2" not in str(failed.value)


def test_a_strong_admin_token_is_taken() -> None:
    """A token of 16 characters or more is accepted as it is."""
    assert Settings.from_env({"TRIGGERS_ADMIN_TOKEN": TOKEN}).admin_token == TOKEN


def test_retry_delays_and_retentions_take_their_notations() -> None:
    """Delays are comma-separated seconds; retentions take units (90s, 12h, 7d)."""
    settings = Settings.from_env(
        {
            "TRIGGERS_RETRY_DELAYS": "0.5, 2,10",
            "TRIGGERS_JOB_RETENTION": "7d",
            "TRIGGERS_AUDIT_RETENTION": "12h",
        }
    )
    assert settings.retry_delays == (0.5, 2.0, 10.0)
    assert settings.job_retention == 7 * 86400
    assert settings.audit_retention == 12 * 3600


def test_a_bad_retention_names_its_variable() -> None:
    """An unreadable retention says which variable it was."""
    with pytest.raises(ValueError, match=r"^TRIGGERS_JOB_RETENTION: "):
        Settings.from_env({"TRIGGERS_JOB_RETENTION": "a while"})


def test_broker_credentials_from_a_secret_are_encoded_into_every_node_url() -> None:
    """TRIGGERS_AMQP_USERNAME/PASSWORD with URL characters reach each node's URL intact."""
    env = {
        "TRIGGERS_AMQP_URL": "amqp://127.0.0.1:5672/v,amqp://127.0.0.2:5672/v",
        "TRIGGERS_AMQP_USERNAME": "app",
        "TRIGGERS_AMQP_PASSWORD": "p@ss/w:rd%#?",
    }
    urls = Settings.from_env(env).amqp_url.split(",")
    assert len(urls) == 2
    for url, host in zip(urls, ("127.0.0.1", "127.0.0.2"), strict=True):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == (host, 5672, "/v")
        assert (parts.username, unquote(parts.password or "")) == ("app", "p@ss/w:rd%#?")


def test_with_credentials_keeps_the_urls_own_user_when_only_a_password_is_given() -> None:
    """A password alone replaces the URL's password and keeps its user."""
    assert with_credentials("amqp://bob:old@h:5672/", "", "new") == "amqp://bob:new@h:5672/"


def test_broker_urls_that_cannot_be_one_cluster_are_refused() -> None:
    """Nodes of one cluster share the scheme, user and vhost; otherwise start-up fails."""
    with pytest.raises(ValueError, match="TRIGGERS_AMQP_URL"):
        Settings.from_env({"TRIGGERS_AMQP_URL": "amqp://a:x@h1/v,amqp://a:x@h2/other"})


def test_trusted_proxies_take_addresses_and_cidrs() -> None:
    """Bare addresses become single-host networks; blanks are ignored."""
    assert parse_networks("127.0.0.1, 10.0.0.0/8,,::1") == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )


def test_faults_and_proxy_header_are_normalised() -> None:
    """TRIGGERS_FAULTS is a set of names; the proxy header is matched case-insensitively."""
    settings = Settings.from_env(
        {"TRIGGERS_FAULTS": "crash-after-apply, slow", "TRIGGERS_PROXY_HEADER": " Forwarded "}
    )
    assert settings.faults == frozenset({"crash-after-apply", "slow"})
    assert settings.proxy_header == "forwarded"


def test_with_changes_a_copy_only() -> None:
    """`with_` returns a changed copy; settings themselves are frozen."""
    settings = Settings()
    changed = settings.with_(prefetch=1)
    assert (settings.prefetch, changed.prefetch) == (64, 1)
    with pytest.raises(AttributeError):
        settings.prefetch = 2  # type: ignore[misc]  # the point: frozen


@pytest.mark.parametrize(
    ("retention", "interval"), [(5.0, 1.0), (600.0, 60.0), (86400.0 * 30, 3600.0)]
)
def test_pruning_runs_often_enough_for_the_retention(retention: float, interval: float) -> None:
    """A tenth of the retention, at least a second, at most an hour."""
    assert prune_interval(retention) == interval
