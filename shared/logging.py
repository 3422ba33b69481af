"""structlog, configured once per entry point: JSON in production, console on a terminal."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
from typing import Any, TextIO

import msgspec
import structlog

from shared.settings import Settings

__all__ = ["LoopFlushedLogger", "configure_logging"]


# msgspec renders a log line several times faster than json.dumps; the summary line per
# request and per command is on every hot path. Values it cannot encode fall back to repr.
_encoder = msgspec.json.Encoder(enc_hook=repr)


def _dumps(event: Any, **_: Any) -> str:
    return _encoder.encode(event).decode()


class LoopFlushedLogger:
    """Writes the lines logged during one event-loop turn with one ``write``.

    A line per request and per command is on every hot path, and a ``write`` syscall per
    line cost about as much as rendering it. Lines logged on a running loop are queued
    and written together by a callback at the end of the turn (`call_soon`): nothing is
    held back longer than the turn itself, so a process killed by SIGKILL loses only the
    lines of the turn it died in. Off the loop (threads, start-up, exit) a line is
    written at once.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lines: list[str] = []
        # The loop whose end of turn will write the queued lines, if one will.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        """Queue the line for the end of this loop turn, or write it now off the loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write([message])
            return
        self._lines.append(message)
        # Per loop: a loop closed before its callback ran must not keep lines of the next
        # loop (a later `asyncio.run` in the same process) waiting until exit.
        if self._scheduled_on is not loop:
            self._scheduled_on = loop
            loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        self._scheduled_on = None
        self.flush()

    def flush(self) -> None:
        """Write what is queued (on the loop's thread, or at exit)."""
        if self._lines:
            lines, self._lines = self._lines, []
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        with self._lock:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LoopFlushedLoggerFactory:
    """One `LoopFlushedLogger` per process, shared by every logger (lines stay in order)."""

    def __init__(self, file: TextIO) -> None:
        self._logger = LoopFlushedLogger(file)

    def __call__(self, *args: Any) -> LoopFlushedLogger:
        return self._logger


def configure_logging(
    log_format: str = "json", level: str = Settings.log_level, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to stderr (or `stream`) in one format.

    Context variables come first so a correlation id bound once reaches every line.
    """
    out = sys.stderr if stream is None else stream
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
        logger_factory=_LoopFlushedLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Libraries (aio-pika, aiohttp) log through the stdlib; keep them at warning and in the
    # same stream. aiohttp's access log is never enabled: it would print the query string,
    # which carries the secret.
    handler = logging.StreamHandler(out)
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
    # aio-pika and aiormq log every lost connection and failed reconnect attempt, often
    # with a traceback; the bus says the same in one line of its own (`bus.disconnected`,
    # `bus.reconnected`, naming the node). Theirs show at the debug level only.
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(
            logging.DEBUG if numeric <= logging.DEBUG else logging.CRITICAL
        )
