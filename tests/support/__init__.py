"""Real daemons the tests start themselves, on loopback, and always stop."""
