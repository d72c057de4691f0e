"""The worker's log output: one write per loop turn, nothing held back or reordered."""

from __future__ import annotations

import asyncio
import io
import json
import threading

from layerq.logs import _TurnLogger


class CountingFile(io.StringIO):
    """A text file that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def lines(file: io.StringIO) -> list[str]:
    return file.getvalue().splitlines()


def test_lines_of_one_loop_turn_leave_in_one_write_by_the_next_turn() -> None:
    file = CountingFile()
    logger = _TurnLogger(file)

    async def main() -> None:
        for n in range(5):
            logger.info(json.dumps({"n": n}))
        assert file.writes == 0  # still this turn
        await asyncio.sleep(0)
        assert file.writes == 1
        assert [json.loads(line)["n"] for line in lines(file)] == [0, 1, 2, 3, 4]

    asyncio.run(main())


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    file = CountingFile()
    logger = _TurnLogger(file)

    async def main() -> None:
        logger.info("first")
        logger.warning("second")
        assert lines(file) == ["first", "second"]
        logger.info("third")
        await asyncio.sleep(0)
        assert lines(file) == ["first", "second", "third"]

    asyncio.run(main())


def test_lines_outside_a_loop_are_written_at_once() -> None:
    file = CountingFile()
    logger = _TurnLogger(file)
    logger.info("sync")
    thread = threading.Thread(target=logger.info, args=("thread",))
    thread.start()
    thread.join()
    assert lines(file) == ["sync", "thread"]


def test_a_line_left_by_a_closed_loop_goes_out_with_the_next_loops_lines() -> None:
    file = CountingFile()
    logger = _TurnLogger(file)
    loop = asyncio.new_event_loop()

    def last_turn() -> None:
        logger.info("last words")
        loop.stop()  # this turn is the last: the flush it scheduled never runs

    loop.call_soon(last_turn)
    loop.run_forever()
    loop.close()
    assert lines(file) == []

    async def next_loop() -> None:
        logger.info("next")
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert lines(file) == ["last words", "next"]
    assert file.writes == 1


def test_timestamps_are_iso_utc_as_structlog_writes_them() -> None:
    """The stamp matches structlog's TimeStamper(fmt="iso", utc=True) to the microsecond."""
    import datetime
    import time

    from layerq.logs import _Stamper

    stamper = _Stamper()
    for _ in range(3):
        before = datetime.datetime.now(tz=datetime.UTC)
        stamp = stamper(None, "info", {})["timestamp"]
        after = datetime.datetime.now(tz=datetime.UTC)
        assert stamp.endswith("Z")
        assert len(stamp) == len("2026-11-30T18:26:00.123456Z")
        parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - datetime.timedelta(microseconds=1) <= parsed <= after
        time.sleep(0.6)  # into the next second, so the cached part is made again
