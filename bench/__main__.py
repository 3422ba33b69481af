"""``python -m bench``: the same as ``triggers bench``."""

from __future__ import annotations

from triggers.cli import main

if __name__ == "__main__":
    main(["bench", *__import__("sys").argv[1:]])
