"""The composition root: the `triggers` command and the wiring of its processes.

The only package that imports both `gateway` and `workers`; `shared` imports neither.
"""
