"""JSON out: the program's one encoder (msgspec's, built once).

Messages, stored rows and HTTP bodies all go through it. Log lines have their own
(`shared.logging`), which renders anything it does not know with `repr` instead of failing.
"""

from __future__ import annotations

import msgspec

__all__ = ["encode_json", "json_text"]

_encoder = msgspec.json.Encoder()

# The bound method itself: no call in between on the hot paths (publish, answers).
encode_json = _encoder.encode


def json_text(value: object) -> str:
    """`value` as compact JSON text (for a TEXT column)."""
    return _encoder.encode(value).decode()
