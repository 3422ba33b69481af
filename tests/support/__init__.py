"""What the tests share: service fixtures (loaded as plugins by tests/conftest.py), helpers,
and the real daemons some tests start themselves, on loopback, and always stop."""
