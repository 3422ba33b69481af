"""The tests' plugins (tests/support/): services, stores, processes and the unit lane.

Tests talk to the real RabbitMQ, PostgreSQL and Redis on 127.0.0.1 (started by .ci/run
when they are not running); a missing server fails the tests rather than skipping them.
Tests marked `unit` need none of them (see tests/support/unit_lane.py).
"""

pytest_plugins = [
    "pytester",
    "tests.support.unit_lane",
    "tests.support.broker",
    "tests.support.databases",
    "tests.support.redis_keys",
    "tests.support.settings",
    "tests.support.gateways",
    "tests.support.workers",
    "tests.support.processes",
]
