"""Log lines: written once per event-loop turn on the loop, at once off it, never lost."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys

import pytest

from shared.logging import LoopFlushedLogger

pytestmark = pytest.mark.unit


class _CountingFile(io.StringIO):
    """A text file that counts its writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_of_one_loop_turn_go_out_in_one_write_in_order() -> None:
    """Three lines logged in one turn are written together at its end, in order."""
    out = _CountingFile()
    logger = LoopFlushedLogger(out)
    for n in range(3):
        logger.msg(f"line {n}")
    assert out.getvalue() == ""  # not before the turn ends
    await asyncio.sleep(0)
    assert out.getvalue() == "line 0\nline 1\nline 2\n"
    assert out.writes == 1
    logger.msg("next turn")
    await asyncio.sleep(0)
    assert out.getvalue().endswith("line 2\nnext turn\n")


def test_off_the_loop_a_line_is_written_at_once() -> None:
    """Start-up, threads and exit have no loop turn to wait for."""
    out = _CountingFile()
    LoopFlushedLogger(out).msg("now")
    assert out.getvalue() == "now\n"


def test_the_last_lines_of_a_loop_are_written_at_exit() -> None:
    """A process whose loop ends right after logging still writes those lines."""
    script = (
        "import asyncio, structlog\n"
        "from shared.logging import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "async def main():\n"
        "    for n in range(5):\n"
        "        structlog.get_logger().info('last', n=n)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["n"] for line in lines if line["event"] == "last"] == [0, 1, 2, 3, 4]


def test_a_loop_stopped_before_its_turn_ended_does_not_hold_back_the_next_loop() -> None:
    """Lines queued on a loop that stopped and closed go out with the next loop's turn."""
    out = _CountingFile()
    logger = LoopFlushedLogger(out)
    loop = asyncio.new_event_loop()

    def log_and_stop() -> None:
        logger.msg("first")
        loop.stop()  # this turn is the loop's last: its end-of-turn callback never runs

    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert out.getvalue() == ""

    async def log_again() -> None:
        logger.msg("second")
        await asyncio.sleep(0)
        assert out.getvalue() == "first\nsecond\n"

    asyncio.run(log_again())
