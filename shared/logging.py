"""structlog, configured once per entry point: JSON in production, console on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

__all__ = ["configure_logging"]


# msgspec renders a log line several times faster than json.dumps; the summary line per
# request and per command is on every hot path. Values it cannot encode fall back to repr.
_encoder = msgspec.json.Encoder(enc_hook=repr)


def _dumps(event: Any, **_: Any) -> str:
    return _encoder.encode(event).decode()


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr in one format.

    Context variables come first so a correlation id bound once reaches every line.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (aio-pika, aiohttp) log through the stdlib; keep them at warning and in the
    # same stream. aiohttp's access log is never enabled: it would print the query string,
    # which carries the secret.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("aiohttp.access").disabled = True
