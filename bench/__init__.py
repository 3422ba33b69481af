"""The benchmark: ceilings, peers and container-triggers measured in one run.

Run it with ``triggers bench`` (or ``python -m bench``); see docs/performance.md.
"""
