"""The unit lane's guard: a `unit` test that reaches RabbitMQ, PostgreSQL or Redis fails.

The guard's own tests run pytest in a subprocess (seconds each), so only the pure one is
in the unit lane.
"""

from __future__ import annotations

import pytest

from tests.support.unit_lane import service_ports

PLUGINS = (
    "-p",
    "tests.support.unit_lane",
    "-p",
    "tests.support.databases",
    "-p",
    "no:cacheprovider",
)


def test_a_unit_test_asking_for_a_service_fixture_fails_before_it_connects(
    pytester: pytest.Pytester,
) -> None:
    """A unit test needing `pg_database` fails naming PostgreSQL; nothing is connected."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.unit
        def test_needs_postgres(pg_database):
            pass
        """
    )
    result = pytester.runpytest_subprocess(*PLUGINS)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*is marked unit but needs PostgreSQL (fixture `pg_database`)*"])


def test_a_unit_test_reaching_a_database_at_run_time_fails(pytester: pytest.Pytester) -> None:
    """`database_url` on the PostgreSQL backend (reached by getfixturevalue) fails too."""
    pytester.makepyfile(
        """
        import pytest
        from tests.support.databases import on_both_databases

        @pytest.mark.unit
        @on_both_databases
        def test_store(database_url):
            assert database_url
        """
    )
    result = pytester.runpytest_subprocess(*PLUGINS)
    result.assert_outcomes(passed=1, errors=1)  # the SQLite run passes
    result.stdout.fnmatch_lines(["*needs PostgreSQL (fixture `pg_database`, at run time)*"])


def test_a_unit_test_that_dials_a_service_port_fails_even_if_it_swallows_the_refusal(
    pytester: pytest.Pytester,
) -> None:
    """Code that falls back when Redis is down cannot make a unit test pass quietly."""
    pytester.makepyfile(
        """
        import contextlib, socket
        import pytest

        @pytest.mark.unit
        def test_falls_back():
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), 1):
                pass

        def test_not_unit_is_left_alone():
            assert socket.socket.connect.__qualname__ == "socket.connect"
        """
    )
    result = pytester.runpytest_subprocess(*PLUGINS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*is marked unit but connected to a service port: 127.0.0.1:6379*"]
    )


def test_the_last_unit_test_may_tear_down_the_sessions_service_fixtures(
    pytester: pytest.Pytester,
) -> None:
    """A run ending on a unit test: the session fixture that dials a service at teardown
    (as the PostgreSQL test database's drop does) is not charged to that test."""
    pytester.makepyfile(
        """
        import contextlib, socket
        import pytest

        @pytest.fixture(scope="session")
        def service():
            yield
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), 1):
                pass

        def test_uses_the_service(service):
            pass

        @pytest.mark.unit
        def test_pure_and_last():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*PLUGINS)
    result.assert_outcomes(passed=2)


@pytest.mark.unit
def test_service_ports_include_the_defaults_and_the_configured_urls() -> None:
    """The guarded ports: the services' defaults plus every port the URLs in the env name."""
    env = {
        "TRIGGERS_AMQP_URL": "amqp://guest:guest@127.0.0.1:5673/,amqp://h2:5674/",
        "TRIGGERS_TEST_POSTGRES": "postgresql://postgres@127.0.0.1:1/test",
        "TRIGGERS_DATABASE": "sqlite:///triggers.db",
    }
    assert service_ports(env) == {1, 5432, 5672, 5673, 5674, 6379}
