"""Rate-limited logging: a flood of bad input writes a few lines, not one per item."""

import logging

from actors import LogThrottle


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_flood_logs_a_few_lines_per_kind_and_then_how_many_were_left_out(caplog):
    clock = Clock()
    t = LogThrottle(logging.getLogger("immune.test"), burst=3, interval=10, clock=clock)
    with caplog.at_level(logging.INFO, logger="immune"):
        for i in range(1000):
            t.event("malformed", "frame.malformed", n=i)
            t.event("oversized", "frame.refused", n=i)
        clock.now = 5
        t.flush()  # the interval has not ended: no summary yet
        assert [r.getMessage() for r in caplog.records] == [
            "frame.malformed n=0", "frame.refused n=0", "frame.malformed n=1", "frame.refused n=1",
            "frame.malformed n=2", "frame.refused n=2"]
        caplog.clear()
        clock.now = 11
        t.event("malformed", "frame.malformed", n=1000)  # a new interval: the summary, then this one
        assert [r.getMessage() for r in caplog.records] == [
            "log.suppressed kind=malformed suppressed=997 seconds=11.0", "frame.malformed n=1000"]
        caplog.clear()
        t.flush(all=True)  # as the actor stops
        assert [r.getMessage() for r in caplog.records] == ["log.suppressed kind=oversized suppressed=997 seconds=11.0"]
