"""Tests against real daemons the tests start themselves (dockerd in Swarm mode)."""
